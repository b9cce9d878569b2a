"""bertkit's CPU dropout against torch's `F.dropout` (Bernoulli sampling), forward and backward, on
the activations of a MiniLM MRPC batch (32 sequences of 56 tokens: hidden states 32x56x384 and
attention weights 32x12x56x56), in one process, alternating, median of `--repeats`. With `--step`,
whole MiniLM training steps on such a batch (forward, backward, AdamW), bertkit's model as it is
against the same model with torch's dropout and scaled_dot_product_attention put back, and against
its attention's dropout chained through autograd (no DropThenAttend: a float mask and the dropped
weights kept), each with the bytes autograd keeps for the backward pass; `--batch 16 --seq 384` is
a SQuAD batch.

    python benchmarks/dropout.py --threads 1
    python benchmarks/dropout.py --threads 1 --step --repeats 12
    python benchmarks/dropout.py --threads 1 --step --repeats 6 --batch 16 --seq 384
    python benchmarks/dropout.py --threads 1 --step --repeats 2 --batch 16 --seq 384 --only bertkit
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import bertkit.model
from bertkit.distributed import keep_freed_memory
from bertkit.model import dropout


def seconds(fn, x: torch.Tensor, grad: torch.Tensor) -> tuple[float, float]:
    """(forward, backward) seconds of one call."""
    t0 = time.perf_counter()
    y = fn(x)
    t1 = time.perf_counter()
    y.backward(grad)
    return t1 - t0, time.perf_counter() - t1


def chained_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                      p: float) -> torch.Tensor:
    """bertkit's CPU training attention with its dropout left to autograd."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return dropout(scores.softmax(-1), p, True) @ v


def kept_bytes(fn):
    """fn()'s result and the bytes autograd keeps for its backward pass (each storage once)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())


def step_seconds(repeats: int, batch: int, seq: int, only: str | None = None) -> dict[str, tuple[float, int]]:
    """Each side's (or the `only` side's) median seconds of a MiniLM training step and bytes kept for
    its backward."""
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
    ids = torch.randint(1000, 30000, (batch, seq), generator=g)
    types = torch.zeros_like(ids)
    types[:, seq // 2:] = 1
    labels = torch.randint(0, 2, (batch,), generator=g)
    sides = {"bertkit": (bertkit.model.dropout, bertkit.model.attention),
             "autograd chain": (bertkit.model.dropout, chained_attention),
             "torch": (lambda x, p, training: F.dropout(x, p, training),
                       lambda q, k, v, mask, p: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p))}
    own = sides["bertkit"]
    sides = {k: v for k, v in sides.items() if only in (None, k)}
    times: dict[str, list[float]] = {k: [] for k in sides}
    kept = {}
    for r in range(repeats + 1):
        for name, (drop, attend) in sides.items():
            bertkit.model.dropout, bertkit.model.attention = drop, attend
            if not r and only is None:  # the first round warms up and counts what the backward keeps
                kept[name] = kept_bytes(lambda: model(ids, types))[1]
            t0 = time.perf_counter()
            F.cross_entropy(model(ids, types), labels).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if r:
                times[name].append(time.perf_counter() - t0)
    bertkit.model.dropout, bertkit.model.attention = own
    return {k: (statistics.median(v), kept.get(k, 0)) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--p", type=float, default=0.1)
    p.add_argument("--step", action="store_true", help="Time whole MiniLM training steps instead.")
    p.add_argument("--batch", type=int, default=32, help="--step's sequences per batch (default 32).")
    p.add_argument("--seq", type=int, default=56, help="--step's tokens per sequence (default 56).")
    p.add_argument("--only", choices=("bertkit", "autograd chain", "torch"),
                   help="--step with this side alone, and the process's peak RSS (one side per process; "
                        "what the backward keeps is not counted then).")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.step:
        keep_freed_memory()  # as bertkit's CPU runs do (distributed.init)
        med = step_seconds(args.repeats, args.batch, args.seq, args.only)
        print(f"MiniLM training step, batch {args.batch} x {args.seq} tokens, {torch.get_num_threads()} "
              f"thread(s), median of {args.repeats}:")
        for name, (sec, kept) in med.items():
            ratio = f" ({sec / med['bertkit'][0]:.2f}x bertkit's)" if "bertkit" in med else ""
            kept_text = f", {kept / 2**20:,.0f} MiB kept for the backward" if kept else ""
            print(f"  {name:>14}: {sec:.3f} s{ratio}{kept_text}")
        if args.only:
            print(f"  peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
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
