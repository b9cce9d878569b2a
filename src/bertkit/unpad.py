"""Unpadded batches: the real tokens of a padded (B, T) batch gathered into one (N, H) matrix, and
attention run on each sequence at its own length.

Linear layers, GELU, dropout and LayerNorm treat every token alike, so they run on the N real tokens
instead of all B*T positions. Attention mixes the tokens of one sequence only: the sequences are
taken longest first, so that each run of equal-length sequences is one contiguous block of rows,
viewed as (g, nh, t, hs) and given to attention without a mask. No score is computed at a padded
position, on any device, and no mask slows the kernel.

Shapes: B batch, T padded length, N real tokens, H hidden, nh heads, hs head size (H / nh), R rows
per sequence that the heads read, M rows that query (N, or B*R in the last layer).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Packing:
    """Where the real tokens of a padded batch go. Packed sequence j is batch row `order[j]`; its
    tokens follow those of sequence j - 1, in their own order."""
    tokens: torch.Tensor  # (N,) int64: each packed token's index in the flattened (B*T) batch
    positions: torch.Tensor  # (N,) int64: each packed token's position in its row (0..T-1)
    order: torch.Tensor  # (B,) int64: the batch row of each packed sequence, longest first
    groups: tuple[tuple[int, int], ...]  # (sequences, length) of each run of equal lengths
    shape: tuple[int, int]  # (B, T)


def pack(attention_mask: torch.Tensor) -> Packing:
    """The packing of a batch whose `attention_mask` (B, T) is 1 at real tokens, 0 at padding. Any
    pattern of padding works (right or left); each row needs at least one real token. One
    device-to-host copy (the lengths), since the groups decide how many attention calls to make."""
    B, T = attention_mask.shape
    real = attention_mask.bool()  # (B, T)
    lengths = real.sum(1)  # (B,)
    order = torch.sort(lengths, descending=True, stable=True).indices  # (B,)
    flat = real[order].flatten().nonzero().squeeze(1)  # (N,) index into the sorted (B*T) batch
    row, col = flat // T, flat % T  # (N,) each
    counts = lengths[order].tolist()
    if counts[-1] == 0:
        raise ValueError("a sequence of the batch has no real token (attention_mask all 0)")
    groups = tuple((len(list(run)), t) for t, run in itertools.groupby(counts))
    return Packing(order[row] * T + col, col, order, groups, (B, T))


def gather(x: torch.Tensor, p: Packing) -> torch.Tensor:
    """(B, T, ...) -> (N, ...): the real tokens, packed."""
    return x.flatten(0, 1)[p.tokens]


def scatter(x: torch.Tensor, p: Packing) -> torch.Tensor:
    """(N, ...) -> (B, T, ...), zeros at padding: what a caller that reads every position gets."""
    B, T = p.shape
    return x.new_zeros(B * T, *x.shape[1:]).index_copy(0, p.tokens, x).view(B, T, *x.shape[1:])


def row_index(rows: torch.Tensor, p: Packing) -> torch.Tensor:
    """Positions `rows` (B, R) of the padded batch -> their packed indices (B*R,), sequence by
    sequence in packed order (R per sequence). Each must be a real token: a row at padding has no
    packed value (it is read from some other token; give such rows no weight in the loss)."""
    B, T = p.shape
    where = torch.full((B * T,), -1, dtype=torch.long, device=rows.device)  # (B*T,)
    where[p.tokens] = torch.arange(len(p.tokens), device=rows.device)
    return where[(p.order[:, None] * T + rows[p.order]).flatten()]  # (B*R,)


def unsort_rows(x: torch.Tensor, p: Packing) -> torch.Tensor:
    """(B*R, H) rows in packed sequence order -> (B, R, H) in batch order."""
    B = p.shape[0]
    x = x.view(B, -1, x.shape[-1])  # (B, R, H), packed order
    return x.new_empty(x.shape).index_copy(0, p.order, x)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, nh: int, p: Packing, r: int | None,
              attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Attention of each packed sequence over its own keys. q (M, H): every token's query (r None)
    or r queries per sequence; k, v (N, H). `attend(q, k, v)` takes (g, nh, Tq, hs), (g, nh, t, hs)
    twice, with no mask (every key is real). Returns (M, H)."""
    H = q.shape[-1]
    hs = H // nh
    sizes = [(g, t, g * t, g * (t if r is None else r)) for g, t in p.groups]
    # One split per tensor, not a slice per group: a slice's backward would zero-fill a full
    # (N, H) gradient for every group, a split's gathers them in one concatenation.
    qs = q.split([m for *_, m in sizes])
    ks, vs = (z.split([n for _, _, n, _ in sizes]) for z in (k, v))
    out = []
    for (g, t, n, m), qg, kg, vg in zip(sizes, qs, ks, vs):
        qg = qg.view(g, -1, nh, hs).transpose(1, 2)  # (g, nh, t or r, hs)
        kg, vg = (z.view(g, t, nh, hs).transpose(1, 2) for z in (kg, vg))  # (g, nh, t, hs)
        out.append(attend(qg, kg, vg).transpose(1, 2).reshape(m, H))  # (m, H)
    return out[0] if len(out) == 1 else torch.cat(out)  # (M, H)
