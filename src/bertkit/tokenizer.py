"""WordPiece tokenization of Google's `vocab.txt`, through Hugging Face `tokenizers` (Rust)."""

from __future__ import annotations

import os
import random
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from bertkit import BertkitError
from bertkit.io import read_text

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Google's WordpieceTokenizer: a longer word is one [UNK]. (Hugging Face's legacy port uses 100,
# so words of 101-200 characters differ there; Google's data and checkpoints are our reference.)
MAX_INPUT_CHARS_PER_WORD = 200


def load_vocab(path: str | os.PathLike) -> dict[str, int]:
    """Google's vocab.txt: one token per line, id = line number. Tokens are stripped of surrounding
    whitespace as Google's `load_vocab` does."""
    text = read_text(path, "vocab")
    vocab: dict[str, int] = {}
    for i, line in enumerate(text.split("\n")):
        token = line.strip()
        if not token:
            if i == len(text.split("\n")) - 1:
                break  # the newline that ends the last line
            raise BertkitError(f"{path}:{i + 1}: empty line in vocab")
        if token in vocab:
            raise BertkitError(f"{path}:{i + 1}: token {token!r} repeats line {vocab[token] + 1}")
        vocab[token] = i
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise BertkitError(f"{path}: vocab lacks the special token(s) {', '.join(missing)}")
    return vocab


class WordPiece:
    """Google's BERT tokenization (BasicTokenizer then WordpieceTokenizer) on a `vocab.txt`.

    >>> tok = WordPiece("vocab.txt")
    >>> ids, types = tok.encode_pair("the cat", "sat", max_length=128)
    """

    def __init__(self, vocab_file: str | os.PathLike, lowercase: bool = True):
        self.vocab_file = Path(vocab_file)
        self.vocab = load_vocab(vocab_file)
        self.lowercase = lowercase
        self.inv_vocab = {i: t for t, i in self.vocab.items()}
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            self.vocab[t] for t in SPECIAL_TOKENS)
        # Google's BasicTokenizer: clean control chars, space out CJK, lower case and strip accents
        # when uncased; split on whitespace and punctuation; then greedy longest-match WordPiece.
        tok = Tokenizer(models.WordPiece(self.vocab, unk_token="[UNK]",
                                         max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        self._tok = tok

    def __len__(self) -> int:
        return len(self.vocab)

    def tokenize(self, text: str) -> list[str]:
        return self._tok.encode(text, add_special_tokens=False).tokens

    def encode(self, text: str) -> list[int]:
        """WordPiece ids of `text`, without [CLS]/[SEP]."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` over many texts at once, in parallel inside `tokenizers`."""
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def encode_words(self, sentences: list[list[str]]) -> list[list[list[int]]]:
        """The WordPiece ids of each word of each pre-split sentence: `[sentence][word] -> ids`. A
        word is split as a text of its own would be (punctuation inside it makes more pieces: `U.S.`
        is u . s .); a word that leaves no piece (control or zero-width characters only) is [UNK]."""
        out = []
        encodings = self._tok.encode_batch(sentences, is_pretokenized=True, add_special_tokens=False)
        for sentence, enc in zip(sentences, encodings):
            words: list[list[int]] = [[] for _ in sentence]
            for piece, w in zip(enc.ids, enc.word_ids):
                words[w].append(piece)
            out.append([pieces or [self.unk_id] for pieces in words])
        return out

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.inv_vocab[i] for i in ids]

    def build_pair(self, a: list[int], b: list[int] | None = None) -> tuple[list[int], list[int]]:
        """`[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]` and the token types (0 for the first segment,
        its [CLS] and [SEP]; 1 for the second and its [SEP])."""
        ids = [self.cls_id, *a, self.sep_id]
        types = [0] * len(ids)
        if b is not None:
            ids += [*b, self.sep_id]
            types += [1] * (len(b) + 1)
        return ids, types

    def encode_pair(self, a: str, b: str | None = None, max_length: int = 512) -> tuple[list[int], list[int]]:
        """Tokenize, truncate the longer side first to fit `max_length` with the special tokens
        (as Google's run_classifier.py does), and build the pair."""
        ta = self.encode(a)
        tb = self.encode(b) if b is not None else None
        if tb is None:
            del ta[max(max_length - 2, 0):]
        else:
            truncate_seq_pair(ta, tb, max_length - 3)
        return self.build_pair(ta, tb)


def truncate_seq_pair(a: list, b: list, max_tokens: int, rng: random.Random | None = None) -> None:
    """Shorten `a` and `b` in place until together they hold at most `max_tokens` items, always
    taking from the longer one (from `b` on ties, as Google's code does).

    Without `rng` the last item goes (Google's run_classifier.py). With `rng`, the first or the last
    item goes with equal odds (Google's create_pretraining_data.py), so the model does not learn
    that segments always end at a sentence boundary.
    """
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        if not longer:
            break
        if rng is not None and rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()
