"""WordPiece against the pure-Python port of Google's tokenization.py that transformers ships
(`BertTokenizerLegacy`), on real text, plus small vocabularies whose pieces follow by hand from
Google's algorithm (clean text, split on whitespace and punctuation, greedy longest match)."""

import csv
import random
from pathlib import Path

import pytest

from bertkit import BertkitError
from bertkit.tokenizer import WordPiece, load_vocab, truncate_seq_pair
from conftest import DATA, VOCAB

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Ten words: whole words, word pieces ("##") and punctuation.
TEN_WORDS = ["the", "play", "##play", "##ing", "##ed", "re", "un", "##do", "!", "中"]


def legacy(vocab: Path, lowercase: bool = True):
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    return BertTokenizerLegacy(str(vocab), do_lower_case=lowercase)


def write_vocab(path: Path, tokens: list[str]) -> Path:
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


def wikitext_lines() -> list[str]:
    return (DATA / "corpus" / "wikitext-2-raw" / "wiki.valid.raw").read_text(encoding="utf-8").split("\n")


def mrpc_pairs() -> list[tuple[str, str]]:
    with open(DATA / "mrpc" / "glue" / "train.tsv", encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert rows[0] == ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    assert all(len(r) == 5 for r in rows)
    return [(r[3], r[4]) for r in rows[1:]]


@pytest.fixture(scope="module")
def uncased() -> WordPiece:
    return WordPiece(VOCAB, lowercase=True)


def test_ids_equal_google_tokenization_on_wikitext_and_mrpc(uncased):
    texts = wikitext_lines() + [s for pair in mrpc_pairs() for s in pair]
    assert len(texts) == 11097
    ref = legacy(VOCAB)
    ours = uncased.encode_batch(texts)
    differ = []
    for text, got in zip(texts, ours):
        want = ref.convert_tokens_to_ids(ref.tokenize(text))
        if got != want:
            differ.append((text[:80], got[:10], want[:10]))
    assert not differ, f"{len(differ)} texts differ, first: {differ[0]}"
    assert sum(map(len, ours)) > 400_000  # the comparison covered real work
    assert [uncased.encode(t) for t in texts[:300]] == ours[:300]  # one at a time == batched


def test_cased_mode_equals_google_on_mrpc():
    """lowercase=False on the same vocab: case is kept (capitalised words mostly become [UNK] in
    this uncased vocab), exactly as Google's tokenizer with do_lower_case=False."""
    texts = [a for a, _ in mrpc_pairs()[:1500]]
    ours = WordPiece(VOCAB, lowercase=False).encode_batch(texts)
    ref = legacy(VOCAB, lowercase=False)
    assert ours == [ref.convert_tokens_to_ids(ref.tokenize(t)) for t in texts]


def test_ten_word_vocab_pieces(tmp_path):
    vocab = write_vocab(tmp_path / "vocab.txt", SPECIALS + TEN_WORDS)
    tok = WordPiece(vocab)
    cases = {
        "Replayed the PLAYING!": ["re", "##play", "##ed", "the", "play", "##ing", "!"],
        "undo": ["un", "##do"],
        "unplayable": ["[UNK]"],  # "un" "##play", then "able" has no piece: the whole word is unknown
        "play,ed": ["play", "[UNK]", "[UNK]"],  # "," splits; "ed" cannot start a word
        "plàying": ["play", "##ing"],  # accents stripped when lower-casing
        "\tplay\x00ing  ": ["play", "##ing"],  # control characters removed, whitespace is a separator
        "play中ing": ["play", "中", "[UNK]"],  # CJK characters become words of their own
        "play" * 25: ["play"] + ["##play"] * 24,  # 100 characters: split (transformers agrees)
        "": [],
    }
    # Google's WordpieceTokenizer(max_input_chars_per_word=200): `if len(chars) > 200: [UNK]`, else
    # greedy longest match. transformers' legacy port stops at 100, so these are checked against
    # the rule alone.
    beyond_transformers = {
        "play" * 37 + "ed": ["play"] + ["##play"] * 36 + ["##ed"],  # 150 characters: split
        "play" * 50: ["play"] + ["##play"] * 49,  # 200 characters: still split
        "play" * 50 + "s": ["[UNK]"],  # 201 characters: too long, unknown
    }
    assert len("play" * 37 + "ed") == 150
    for text, pieces in {**cases, **beyond_transformers}.items():
        assert tok.tokenize(text) == pieces, text[:40]
        assert tok.encode(text) == [tok.vocab[p] for p in pieces]
    ref = legacy(vocab)
    for text in cases:
        assert tok.encode(text) == ref.convert_tokens_to_ids(ref.tokenize(text)), text


def test_cased_vocab_keeps_case_and_accents(tmp_path):
    vocab = write_vocab(tmp_path / "vocab.txt", SPECIALS + ["Café", "café", "cafe", "Paris", "paris", "in", "##s"])
    cased = WordPiece(vocab, lowercase=False)
    assert cased.tokenize("Café in Paris") == ["Café", "in", "Paris"]
    assert cased.tokenize("cafés in paris") == ["café", "##s", "in", "paris"]
    assert cased.tokenize("CAFE") == ["[UNK]"]
    lower = WordPiece(vocab, lowercase=True)
    assert lower.tokenize("Café in Paris") == ["cafe", "in", "paris"]
    for lowercase, tok in ((False, cased), (True, lower)):
        ref = legacy(vocab, lowercase)
        for text in ("Café in Paris", "cafés in paris", "CAFE", "Cafés"):
            assert tok.encode(text) == ref.convert_tokens_to_ids(ref.tokenize(text))


def test_special_ids_and_build_pair(uncased):
    assert (uncased.pad_id, uncased.unk_id, uncased.cls_id, uncased.sep_id, uncased.mask_id) == (0, 100, 101, 102, 103)
    assert len(uncased) == 30522 and uncased.inv_vocab[1996] == "the"
    ids, types = uncased.build_pair([7, 8], [9])
    assert ids == [101, 7, 8, 102, 9, 102] and types == [0, 0, 0, 0, 1, 1]
    ids, types = uncased.build_pair([7, 8])
    assert ids == [101, 7, 8, 102] and types == [0, 0, 0, 0]


def test_encode_pair_truncates_longer_side_first(tmp_path):
    tok = WordPiece(write_vocab(tmp_path / "vocab.txt", SPECIALS + TEN_WORDS))
    the, play = tok.vocab["the"], tok.vocab["play"]
    ids, types = tok.encode_pair("the the the the the", "play play", max_length=8)  # 5 + 2 > 8 - 3
    assert ids == [tok.cls_id, the, the, the, tok.sep_id, play, play, tok.sep_id]
    assert types == [0, 0, 0, 0, 0, 1, 1, 1]
    # Equal lengths: Google's rule takes from the second segment first.
    ids, types = tok.encode_pair("the the the", "play play play", max_length=8)
    assert ids == [tok.cls_id, the, the, the, tok.sep_id, play, play, tok.sep_id]
    ids, _ = tok.encode_pair("the " * 600, None, max_length=16)
    assert len(ids) == 16 and ids[-1] == tok.sep_id
    ids, types = tok.encode_pair("the", "play", max_length=128)  # nothing to cut
    assert ids == [tok.cls_id, the, tok.sep_id, play, tok.sep_id] and types == [0, 0, 0, 1, 1]


def test_encode_pair_equals_reference_on_mrpc(uncased):
    """Google's run_classifier.py layout at a length that truncates most MRPC pairs."""
    import transformers

    ref = legacy(VOCAB)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # it warns once per truncated pair
    try:
        truncated = 0
        for a, b in mrpc_pairs()[:800]:
            ids, types = uncased.encode_pair(a, b, max_length=32)
            want = ref.prepare_for_model(ref.convert_tokens_to_ids(ref.tokenize(a)),
                                         ref.convert_tokens_to_ids(ref.tokenize(b)), max_length=32,
                                         truncation="longest_first", return_token_type_ids=True)
            assert ids == want["input_ids"] and types == want["token_type_ids"], (a, b)
            truncated += len(ids) == 32
    finally:
        transformers.logging.set_verbosity(verbosity)
    assert truncated > 400


def test_truncate_seq_pair_with_rng_cuts_both_ends():
    a, b = list(range(10)), list(range(100, 103))
    truncate_seq_pair(a, b, 8, rng=random.Random(0))
    assert len(a) == 5 and b == [100, 101, 102]
    assert a != [0, 1, 2, 3, 4] and a != [5, 6, 7, 8, 9]  # some from the front, some from the back
    assert a == list(range(a[0], a[0] + 5))  # still one contiguous run


@pytest.mark.parametrize("content, match", [
    ("[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\n", r"vocab.txt: vocab lacks the special token\(s\) \[MASK\]"),
    ("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\nof\nthe\n", r"vocab.txt:8: token 'the' repeats line 6"),
    ("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n\nthe\n", r"vocab.txt:6: empty line"),
])
def test_bad_vocab_files(tmp_path, content, match):
    path = tmp_path / "vocab.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(BertkitError, match=match):
        WordPiece(path)


def test_vocab_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_bytes(b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\ncaf\xe9\n")  # Latin-1, not UTF-8
    with pytest.raises(BertkitError, match=r"vocab.txt:6: vocab is not valid UTF-8"):
        load_vocab(path)
    with pytest.raises(BertkitError, match="no such vocab file"):
        load_vocab(tmp_path / "missing.txt")


def test_vocab_with_crlf_and_no_final_newline(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_bytes(b"[PAD]\r\n[UNK]\r\n[CLS]\r\n[SEP]\r\n[MASK]\r\nthe")
    assert load_vocab(path) == {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "the": 5}
