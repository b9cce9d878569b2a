"""bertkit's CPU dropout against torch's `F.dropout` (Bernoulli sampling), forward and backward, on
the activations of a MiniLM MRPC batch (32 sequences of 56 tokens: hidden states 32x56x384 and
attention weights 32x12x56x56), in one process, alternating, median of `--repeats`. With `--step`,
whole MiniLM training steps on such a batch (forward, backward, AdamW), bertkit's model as it is
against the same model with torch's dropout and scaled_dot_product_attention put back.

    python benchmarks/dropout.py --threads 1
    python benchmarks/dropout.py --threads 1 --step --repeats 12
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import bertkit.model
from bertkit.model import dropout


def seconds(fn, x: torch.Tensor, grad: torch.Tensor) -> tuple[float, float]:
    """(forward, backward) seconds of one call."""
    t0 = time.perf_counter()
    y = fn(x)
    t1 = time.perf_counter()
    y.backward(grad)
    return t1 - t0, time.perf_counter() - t1


def step_seconds(repeats: int) -> dict[str, float]:
    """Median seconds of a MiniLM training step with bertkit's dropout and with torch's."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import finetune_mrpc as fm
    from bertkit.checkpoint import load_weights
    from bertkit.convert import read_any
    from bertkit.optim import make_finetune_optimizer

    config, state, *_ = read_any(fm.minilm_dir())
    model = bertkit.model.BertForSequenceClassification(config)
    load_weights(model, state, "MiniLM")
    model.train()
    optimizer = make_finetune_optimizer(model, 1e-4, 0.01)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (32, 56), generator=g)
    types = torch.zeros_like(ids)
    types[:, 28:] = 1
    labels = torch.randint(0, 2, (32,), generator=g)
    sides = {"bertkit": (bertkit.model.dropout, bertkit.model.attention),
             "torch": (lambda x, p, training: F.dropout(x, p, training),
                       lambda q, k, v, mask, p: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p))}
    times: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(repeats + 1):
        for name, (drop, attend) in sides.items():
            bertkit.model.dropout, bertkit.model.attention = drop, attend
            t0 = time.perf_counter()
            F.cross_entropy(model(ids, types), labels).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if r:  # the first round warms up
                times[name].append(time.perf_counter() - t0)
    bertkit.model.dropout, bertkit.model.attention = sides["bertkit"]
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--p", type=float, default=0.1)
    p.add_argument("--step", action="store_true", help="Time whole MiniLM training steps instead.")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.step:
        med = step_seconds(args.repeats)
        print(f"MiniLM training step, batch 32 x 56 tokens, {torch.get_num_threads()} thread(s), s (median of "
              f"{args.repeats}): bertkit {med['bertkit']:.3f}, with torch's dropout {med['torch']:.3f}, "
              f"{med['torch'] / med['bertkit']:.2f}x")
        return 0
    sides = {"torch": lambda x: F.dropout(x, args.p, True), "bertkit": lambda x: dropout(x, args.p, True)}
    print(f"dropout p {args.p}, {torch.get_num_threads()} thread(s), ms (median of {args.repeats})")
    for shape in ((32, 56, 384), (32, 12, 56, 56)):
        x, grad = torch.randn(shape, requires_grad=True), torch.randn(shape)
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in sides}
        for r in range(args.repeats + 3):
            for name, fn in sides.items():
                t = seconds(fn, x, grad)
                if r >= 3:  # warm-up
                    times[name].append(t)
        for i, part in enumerate(("forward", "backward")):
            med = {k: statistics.median(t[i] for t in v) * 1e3 for k, v in times.items()}
            print(f"{'x'.join(map(str, shape)):>14} {part:>8}: torch {med['torch']:.2f}, bertkit "
                  f"{med['bertkit']:.2f}, {med['torch'] / med['bertkit']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
