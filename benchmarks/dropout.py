"""bertkit's CPU dropout against torch's `F.dropout` (Bernoulli sampling), forward and backward, on
the activations of a MiniLM MRPC batch (32 sequences of 56 tokens: hidden states 32x56x384 and
attention weights 32x12x56x56), in one process, alternating, median of `--repeats`.

    python benchmarks/dropout.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from bertkit.model import dropout


def seconds(fn, x: torch.Tensor, grad: torch.Tensor) -> tuple[float, float]:
    """(forward, backward) seconds of one call."""
    t0 = time.perf_counter()
    y = fn(x)
    t1 = time.perf_counter()
    y.backward(grad)
    return t1 - t0, time.perf_counter() - t1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--p", type=float, default=0.1)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
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
