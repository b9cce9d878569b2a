"""The data pipeline's fast sentence encoder must give exactly what `WordPiece.encode` gives (which
the foundation checked against Google's tokenization)."""

import pytest
from conftest import DATA, FIXTURES, VOCAB
from hypothesis import given, settings
from hypothesis import strategies as st

from bertkit.data.encode import SentenceEncoder
from bertkit.data.text import documents, sentence_splitter
from bertkit.tokenizer import WordPiece


@pytest.fixture(scope="module")
def uncased():
    return WordPiece(VOCAB)


@pytest.fixture(scope="module")
def cased():
    return WordPiece(VOCAB, lowercase=False)


def test_real_text_encodes_as_wordpiece_does(uncased, cased):
    raw = (DATA / "corpus" / "wikitext-2-raw" / "wiki.valid.raw").read_text(encoding="utf-8")
    sentences = [s for d in documents(raw, "wikitext", sentence_splitter("blingfire")) for s in d]
    sentences += [line.strip() for line in (FIXTURES / "sample_text.txt").read_text(encoding="utf-8").splitlines()]
    assert sum(not s.isascii() for s in sentences) > 500  # both paths are exercised
    for tokenizer in (uncased, cased):
        if tokenizer is cased:
            sentences = sentences[:3000]
        encoder = SentenceEncoder(tokenizer)
        want = tokenizer.encode_batch(sentences)
        assert encoder.encode(sentences) == want
        assert encoder.encode(sentences) == want  # again, from a warm word cache


# Characters where tokenizers go wrong: controls, tabs, every ASCII punctuation mark, accents,
# combining marks, CJK, odd spaces, and words about WordPiece's 200-character limit.
TRICKY = st.sampled_from(["\t", "\r", "\x0b", "\x0c", "\x1f", "\x7f", "\x00", " ", "  ", "é", "É", "\u0301",
                          "力", "\u00a0", "\u2028", "\u200b", "“", "ﬁ", "ß", "İ", "x" * 101, "x" * 201, "##", "[MASK]"])
TEXT = st.lists(st.one_of(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=12),
                          TRICKY), max_size=12).map("".join)


@pytest.fixture(scope="module")
def encoder(uncased):
    return SentenceEncoder(uncased)  # one for all examples: its word cache fills as they go


@settings(max_examples=150, deadline=None)
@given(st.lists(TEXT, min_size=1, max_size=6))
def test_random_text_encodes_as_wordpiece_does(uncased, encoder, sentences):
    assert encoder.encode(sentences) == uncased.encode_batch(sentences)
