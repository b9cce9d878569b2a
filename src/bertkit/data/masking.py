"""Masked-LM targets, chosen when an instance is loaded rather than when it is written, so that each
epoch sees new masks (the seed's TFRecords fix them once, dupe_factor times over).

The choice follows Google's `create_masked_lm_predictions` (google-research/bert,
create_pretraining_data.py): masked_lm_prob of the tokens, rounded, at least 1 and at most
max_predictions_per_seq, never [CLS] or [SEP]; each chosen token becomes [MASK] with odds 0.8,
stays itself with 0.1, and becomes a uniformly random vocabulary id with 0.1. With whole-word
masking, a word's pieces ("##" continuations) are chosen together or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def word_starts(tokens: Sequence[str]) -> np.ndarray:
    """(V,) bool: True for vocabulary entries that begin a word, False for "##" continuations."""
    return np.array([not t.startswith("##") for t in tokens], dtype=bool)


def instance_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one instance's masks: a function of (seed, epoch, index) only, so a resumed
    run, a DataLoader worker and a single process all draw the same masks."""
    return np.random.default_rng([seed, epoch, index])


def mask_tokens(ids: np.ndarray, rng: np.random.Generator, *, vocab_size: int, cls_id: int, sep_id: int,
                mask_id: int, max_predictions: int, masked_lm_prob: float = 0.15,
                word_start: np.ndarray | Callable[[np.ndarray], np.ndarray] | None = None,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Choose and apply masks to one unpadded instance.

    ids: (L,) token ids with [CLS]/[SEP]. word_start: None for token-level masking, else a (V,) bool
    array or a function of ids that says which ids begin a word (whole-word masking).
    Returns (masked ids (L,), positions (n,) ascending, original ids at those positions (n,)),
    n <= max_predictions.
    """
    length = len(ids)
    candidates = np.flatnonzero((ids != cls_id) & (ids != sep_id))  # (C,)
    # Google counts [CLS]/[SEP] in the length it takes masked_lm_prob of; Python's round() too.
    n = min(max_predictions, max(1, int(round(length * masked_lm_prob))))
    if word_start is None:
        positions = rng.permutation(candidates)[:n]
    else:
        positions = _whole_words(ids, candidates, n, rng, word_start)
    positions.sort()
    labels = ids[positions]
    masked = ids.copy()
    draw = rng.random(len(positions))  # (n,): [0, .8) mask, [.8, .9) keep, [.9, 1) random id
    masked[positions[draw < 0.8]] = mask_id
    swap = positions[draw >= 0.9]
    # floor(u * V) rather than rng.integers: the same uniform draw at a tenth of the call cost.
    masked[swap] = (rng.random(len(swap)) * vocab_size).astype(ids.dtype)
    return masked, positions, labels


def _whole_words(ids: np.ndarray, candidates: np.ndarray, n: int, rng: np.random.Generator,
                 word_start) -> np.ndarray:
    if len(candidates) == 0:
        return candidates
    starts = word_start(ids[candidates]) if callable(word_start) else word_start[ids[candidates]]
    starts = np.asarray(starts, dtype=bool).copy()
    starts[0] = True  # a leading continuation piece starts a group of its own, as in Google's code
    first = np.flatnonzero(starts)  # (G,) index into candidates of each word's first piece
    sizes = np.diff(np.append(first, len(candidates)))  # (G,)
    taken, count = [], 0
    sizes_list, first_list = sizes.tolist(), first.tolist()
    for g in rng.permutation(len(first)).tolist():
        if count >= n:
            break
        if count + sizes_list[g] > n:
            continue  # the word does not fit in what is left: try a shorter one
        taken.append(candidates[first_list[g]:first_list[g] + sizes_list[g]])
        count += sizes_list[g]
    return np.concatenate(taken) if taken else candidates[:0]
