"""Load-time masks follow Google's create_masked_lm_predictions: how many, which, and what they
become, and whole words together."""

import numpy as np
import pytest
from conftest import VOCAB

from bertkit.data.masking import instance_rng, mask_tokens, word_starts
from bertkit.tokenizer import WordPiece

CLS, SEP, MASK, V = 101, 102, 103, 30522


def instance(length: int, rng: np.random.Generator) -> np.ndarray:
    a = (length - 3) // 2
    body = rng.integers(1000, V, size=length - 3)
    return np.concatenate([[CLS], body[:a], [SEP], body[a:], [SEP]]).astype(np.int32)


def mask(ids, rng, **kw):
    return mask_tokens(ids, rng, vocab_size=V, cls_id=CLS, sep_id=SEP, mask_id=MASK, **kw)


def test_how_many_and_which_positions():
    rng = np.random.default_rng(0)
    for length in [5, 10, 30, 50, 100, 128, 300, 512]:
        ids = instance(length, rng)
        for max_predictions in (20, 80):
            masked, positions, labels = mask(ids, rng, max_predictions=max_predictions)
            # Google: min(max_predictions_per_seq, max(1, int(round(len(tokens) * masked_lm_prob)))),
            # [CLS] and [SEP] counted in the length; Python rounds halves to even (30 * 0.15 -> 4).
            assert len(positions) == min(max_predictions, max(1, int(round(length * 0.15))))
            assert np.all(np.diff(positions) > 0)  # ascending, no repeats
            assert not np.isin(ids[positions], [CLS, SEP]).any()
            assert np.array_equal(labels, ids[positions])
            untouched = np.setdiff1d(np.arange(length), positions)
            assert np.array_equal(masked[untouched], ids[untouched])
    assert len(mask(instance(30, rng), rng, max_predictions=20)[1]) == 4


def test_eighty_ten_ten():
    rng = np.random.default_rng(1)
    counts = np.zeros(3)
    for index in range(3000):
        ids = instance(128, rng)
        masked, positions, labels = mask(ids, instance_rng(5, 0, index), max_predictions=20)
        shown = masked[positions]
        counts += [np.sum(shown == MASK), np.sum(shown == labels), np.sum((shown != MASK) & (shown != labels))]
    share = counts / counts.sum()  # 57,000 positions: 0.8/0.1/0.1 to within about 0.005
    assert share == pytest.approx([0.8, 0.1, 0.1], abs=0.01)


def test_masks_depend_on_seed_epoch_and_index_only():
    ids = instance(128, np.random.default_rng(2))
    first = mask(ids, instance_rng(12345, 3, 77), max_predictions=20)
    again = mask(ids.copy(), instance_rng(12345, 3, 77), max_predictions=20)
    for x, y in zip(first, again):
        assert np.array_equal(x, y)
    for other in [(12345, 4, 77), (12345, 3, 78), (1, 3, 77)]:
        assert not np.array_equal(first[1], mask(ids, instance_rng(*other), max_predictions=20)[1])


def test_whole_word_masking_takes_every_piece_of_a_word():
    tokenizer = WordPiece(VOCAB)
    starts = word_starts(tokenizer.convert_ids_to_tokens(range(len(tokenizer))))
    text = ("unbelievably quixotic lexicographers hypothesized photosynthesis antidisestablishmentarianism "
            "in the eighteenth century while pneumonoultramicroscopic volcanoes erupted")
    body = tokenizer.encode(text)
    ids = np.array([CLS, *body, SEP, *body[:20], SEP], dtype=np.int32)
    word_of = np.cumsum(starts[ids])  # pieces of one word share a number
    assert (~starts[ids]).sum() > 10  # plenty of "##" pieces
    for index in range(200):
        masked, positions, labels = mask(ids, instance_rng(0, 0, index), max_predictions=20, word_start=starts)
        assert 0 < len(positions) <= min(20, round(len(ids) * 0.15))
        for word in set(word_of[positions]):
            pieces = np.flatnonzero((word_of == word) & ~np.isin(ids, [CLS, SEP]))
            assert set(pieces) <= set(positions), "a word is masked whole or not at all"
