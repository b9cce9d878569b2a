"""Sentence encoding for data preparation: `WordPiece.encode` for millions of sentences, faster.

Most of a Wikipedia or book corpus is ASCII, and in ASCII text Google's BasicTokenizer reduces to:
drop control characters, turn tabs and newlines into spaces, lower-case (uncased vocab), then split
into runs of letters and digits and single punctuation characters. We do that split with one regular
expression and look each distinct word up once in a cache filled by the Rust WordPiece model; a
corpus repeats its words, so the tokenizer sees each only once. In other sentences, the chunks
between spaces that hold a non-ASCII character go through the whole Rust tokenizer (once per
distinct chunk). The result equals `WordPiece.encode` sentence for sentence
(tests/test_data_encode.py checks it on real text and on random strings).
"""

from __future__ import annotations

import itertools
import re

from tokenizers import Tokenizer, models

from bertkit.tokenizer import MAX_INPUT_CHARS_PER_WORD, WordPiece

# Google's _is_control: every ASCII control character except tab, newline and carriage return is
# deleted; those three are whitespace.
_CLEAN = {c: None for c in [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F]}
_CLEAN.update({0x09: " ", 0x0A: " ", 0x0D: " "})
# After cleaning, every printable ASCII character that is not a letter, digit or space is
# punctuation to BERT (Google's _is_punctuation treats all of 33-47, 58-64, 91-96, 123-126 so).
_WORDS = re.compile(r"[A-Za-z0-9]+|[^ A-Za-z0-9]")
_CHUNKS = re.compile(r"[^ \n]+|\n")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
_WORDS_PER_CALL = 2000
_BATCH = 20000  # sentences per pass: bounds the word lists held at once


class SentenceEncoder:
    def __init__(self, tokenizer: WordPiece, cache_limit: int = 2_000_000):
        self.tokenizer = tokenizer
        self.cache: dict[str, tuple[int, ...]] = {}
        self.cache_limit = cache_limit
        # New ASCII words need no normalizing or splitting, only WordPiece itself (the same model,
        # vocab and limits as `tokenizer`); fed many to a call, pre-split, they cost a quarter of
        # what one call per word does.
        self._wordpiece = Tokenizer(models.WordPiece(tokenizer.vocab, unk_token="[UNK]",
                                                     max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD))

    def encode(self, sentences: list[str]) -> list[list[int]]:
        """WordPiece ids of each sentence, without [CLS]/[SEP]."""
        out: list[list[int]] = []
        for i in range(0, len(sentences), _BATCH):
            out.extend(self._encode(sentences[i:i + _BATCH]))
        return out

    def _encode(self, sentences: list[str]) -> list[list[int]]:
        """Split each sentence into pieces whose WordPiece ids, put end to end, are the sentence's,
        then look each distinct piece up once. Google's BasicTokenizer splits at every space and
        changes nothing across one, so each space-separated chunk tokenizes alone as it does in its
        sentence; an ASCII chunk is further split into its words and punctuation marks (lower-cased
        for an uncased vocab), which repeat far more often than chunks do."""
        plain = [s.isascii() for s in sentences]
        out: list[list[int]] = [[] for _ in sentences]
        lower = self.tokenizer.lowercase
        for want in (True, False):
            index = [i for i, p in enumerate(plain) if p == want]
            if not index:
                continue
            text = "\n".join(sentences[i] for i in index)
            if text.count("\n") != len(index) - 1:  # a sentence holds a newline: give it to the tokenizer
                ids = self.tokenizer.encode_batch([sentences[i] for i in index])
            elif want:
                if _CONTROL.search(text):
                    text = "\n".join(sentences[i].translate(_CLEAN) for i in index)
                ids = self._lookup(_WORDS.findall(text.lower() if lower else text))
            else:
                words: list[str] = []
                for chunk in _CHUNKS.findall(text):
                    if not chunk.isascii():
                        words.append(chunk)
                    else:
                        if _CONTROL.search(chunk):
                            chunk = chunk.translate(_CLEAN)
                        words += _WORDS.findall(chunk.lower() if lower else chunk)
                ids = self._lookup(words)
            for i, x in zip(index, ids):
                out[i] = x
        return out

    def _lookup(self, words: list[str]) -> list[list[int]]:
        """Ids of newline-separated runs of words, one list per run."""
        cache = self.cache
        if len(cache) > self.cache_limit:
            cache.clear()
        new = sorted(w for w in set(words) if w not in cache and w != "\n")
        plain = [w for w in new if w.isascii()]
        for start in range(0, len(plain), _WORDS_PER_CALL):
            batch = plain[start:start + _WORDS_PER_CALL]
            pieces: list[list[int]] = [[] for _ in batch]
            encoding = self._wordpiece.encode(batch, is_pretokenized=True, add_special_tokens=False)
            for word, token in zip(encoding.word_ids, encoding.ids):
                pieces[word].append(token)
            cache.update(zip(batch, map(tuple, pieces)))
        other = [w for w in new if not w.isascii()]  # chunks with non-ASCII: the whole pipeline
        if other:
            cache.update(zip(other, map(tuple, self.tokenizer.encode_batch(other))))
        get, chain = cache.__getitem__, itertools.chain.from_iterable
        ends = list(itertools.compress(range(len(words)), map("\n".__eq__, words)))
        ends.append(len(words))
        out, start = [], 0
        for end in ends:
            out.append(list(chain(map(get, words[start:end]))))
            start = end + 1
        return out
