"""Batches for fine-tuning: rows padded to the batch's longest, and training orders that put
sequences of similar length in the same optimizer step."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def length_grouped_order(lengths: np.ndarray, chunk: int, seed: int, epoch: int,
                         group_chunks: int = 50) -> np.ndarray:
    """Epoch `epoch`'s order of the samples for `Stream`, with each run of `chunk` samples (one
    optimizer step's batch, all ranks together) of similar lengths.

    The samples are shuffled, cut into groups of `chunk * group_chunks`, each group sorted by length
    and cut into chunks, and the chunks shuffled. Epochs follow each other without a break, so a
    step's batch starts at a multiple of `chunk` counted from the first epoch: the first
    `(-epoch * n) % chunk` samples of this epoch finish the last batch of the one before, and the
    short chunk goes last. Depends only on (seed, epoch)."""
    n = len(lengths)
    rng = np.random.default_rng([seed, epoch, 7])
    perm = rng.permutation(n)
    head = min((-epoch * n) % chunk, n)
    rest = perm[head:]
    chunks = []
    group = chunk * group_chunks
    for g in range(0, len(rest), group):
        part = rest[g:g + group]
        part = part[np.argsort(lengths[part], kind="stable")]
        chunks += [part[i:i + chunk] for i in range(0, len(part), chunk)]
    tail = [c for c in chunks if len(c) < chunk]  # at most one: only the last group can be short
    full = [c for c in chunks if len(c) == chunk]
    full = [full[i] for i in rng.permutation(len(full))]
    return np.concatenate([perm[:head], *full, *tail]).astype(np.int64)


def pad_rows(rows: Sequence[Sequence[int]], value: int, multiple_of: int | None = None) -> torch.Tensor:
    """Rows padded on the right to the longest (rounded up to `multiple_of`): (B, T) int64."""
    width = max((len(r) for r in rows), default=0)
    if multiple_of:
        width = -(-width // multiple_of) * multiple_of
    out = torch.full((len(rows), width), value, dtype=torch.int64)  # (B, T)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r, dtype=torch.int64)
    return out
