"""Named-entity data: reading CoNLL and JSON Lines files of tagged sentences, the tag scheme, the
WordPiece windows a tagger reads, padded batches, and predictions written back in CoNLL format.

Two file formats, told apart by the extension (`.jsonl`, `.json`, `.ndjson`: JSON Lines; anything
else: CoNLL) or by --file_format:
- CoNLL (CoNLL-2003's `eng.train`): one word per line, its fields separated by spaces (`word POS
  chunk tag`; every line of a file has the same number of fields, the tag in the last unless
  --tag_column says another), a blank line between sentences. A line whose word is `-DOCSTART-`
  separates documents and is no sentence. A file of one field per line has words and no tags.
- JSON Lines: one sentence per line, `{"tokens": ["EU", "rejects", ...], "tags": ["I-ORG", "O", ...]}`
  ("tags" may be left out of a file that is only to be tagged).
Tags are `O`, `B-TYPE` or `I-TYPE`, in IOB1 or IOB2 (ner_metric.py).

Long sentences: a sentence whose pieces do not fit in max_seq_length - 2 ([CLS] and [SEP]) is cut
into consecutive windows of whole words, each as long as fits, so every word is trained on and
predicted (by a window that sees only its part of the sentence). A single word with more pieces
than a window holds keeps its first ones (its label sits on the first).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from bertkit import BertkitError
from bertkit.io import read_bytes, write_atomic
from bertkit.tasks.finetune.batching import pad_rows
from bertkit.tasks.finetune.ner_metric import SCHEMES, is_tag, scheme_evidence

IGNORE = -100  # the label of pieces the loss skips: [CLS], [SEP], a word's later pieces, padding
FORMATS = ("conll", "jsonl")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
DOCSTART = "-DOCSTART-"


@dataclass
class Sentence:
    """One sentence: its words, their tags (None when the file has none), and where each word is
    in its file (`lines`: the 1-based line of each word; in JSON Lines the sentence's line)."""
    words: list[str]
    tags: list[str] | None
    lines: list[int]


@dataclass
class TokenFeature:
    """One window of a sentence: `[CLS] pieces [SEP]` ids, the label of each piece (the tag id at a
    word's first piece, IGNORE elsewhere), and the first piece's position of each word in it;
    `sentence` and `word` say which sentence and which of its words comes first."""
    input_ids: list[int]
    labels: list[int]
    starts: list[int]
    sentence: int
    word: int


# ---- reading ----------------------------------------------------------------------------------

def file_format(path: str | os.PathLike, given: str | None = None) -> str:
    """conll or jsonl: `given` (--file_format) unless it is None or "auto", else from the extension."""
    if given and given != "auto":
        return given
    return "jsonl" if Path(path).suffix.lower() in JSONL_SUFFIXES else "conll"


def read_lines(path: str | os.PathLike) -> list[str]:
    """A UTF-8 file's lines without their ends (a byte order mark dropped); bytes that are not
    UTF-8 are one error naming the line and column."""
    raw = read_bytes(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line, column = raw.count(b"\n", 0, e.start) + 1, e.start - raw.rfind(b"\n", 0, e.start)
        raise BertkitError(f"{path}:{line}:{column}: "
                           f"not valid UTF-8 (byte 0x{raw[e.start]:02x})") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def read_conll(path: str | os.PathLike, tag_column: int | None = None, labelled: bool = True,
               words_only: bool = False) -> list[Sentence]:
    """The sentences of a CoNLL file; `tag_column` is 1-based (default: the last field). A file of
    one field per line has no tags, which only an unlabelled file (`labelled=False`) may be. With
    `words_only` the words alone are read (the other fields, whatever they hold, are left)."""
    sentences: list[Sentence] = []
    words, tags, where = [], [], []
    expected = None  # fields per line, from the first word line
    has_tags = False

    def end_sentence():
        if words:
            sentences.append(Sentence(list(words), list(tags) if has_tags else None, list(where)))
            words.clear()
            tags.clear()
            where.clear()

    for n, line in enumerate(read_lines(path), start=1):
        fields = line.split()
        if not fields or fields[0] == DOCSTART:
            end_sentence()
            continue
        if expected is None:
            expected = len(fields)
            if expected == 1 and labelled:
                raise BertkitError(f"{path}:{n}: one field per line (a word and no tag); expected `word ... tag`"
                                   + (" (JSON Lines? pass --file_format jsonl)" if line.lstrip().startswith("{") else ""))
            has_tags = expected > 1 and not words_only
            column = expected if tag_column is None else tag_column
            if has_tags and not 2 <= column <= expected:
                raise BertkitError(f"{path}:{n}: --tag_column {column}, but the lines have {expected} fields "
                                   "(the word is field 1)")
        elif len(fields) != expected:
            raise BertkitError(f"{path}:{n}: {len(fields)} space-separated fields, but the file's lines have "
                               f"{expected} (as its first word line)")
        words.append(fields[0])
        where.append(n)
        if has_tags:
            tag = fields[column - 1]
            if not is_tag(tag):
                col = _field_column(line, column)
                raise BertkitError(f"{path}:{n}:{col}: tag {tag!r} is not O, B-TYPE or I-TYPE")
            tags.append(tag)
    end_sentence()
    if not sentences:
        raise BertkitError(f"{path}: empty file: no sentence (expected CoNLL lines `word ... tag`)")
    return sentences


def _field_column(line: str, field: int) -> int:
    """The 1-based character column where the `field`-th whitespace-separated field starts."""
    pos = 0
    for _ in range(field):
        while line[pos].isspace():
            pos += 1
        start = pos
        while pos < len(line) and not line[pos].isspace():
            pos += 1
    return start + 1


def read_jsonl(path: str | os.PathLike, labelled: bool = True) -> list[Sentence]:
    """The sentences of a JSON Lines file, one `{"tokens": [...], "tags": [...]}` object per line
    (blank lines skipped). When `labelled` is False "tags" may be left out, of every line."""
    sentences = []
    for n, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as e:
            col = f":{e.colno}" if isinstance(e, json.JSONDecodeError) else ""
            raise BertkitError(f"{path}:{n}{col}: not JSON ({getattr(e, 'msg', e)})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("tokens"), list):
            raise BertkitError(f"{path}:{n}: expected an object with a \"tokens\" list")
        words = obj["tokens"]
        for i, w in enumerate(words):
            if not isinstance(w, str) or not w or any(c.isspace() for c in w):
                raise BertkitError(f"{path}:{n}: token {i} ({w!r:.40}) must be a non-empty string without spaces")
        if not words:
            raise BertkitError(f"{path}:{n}: a sentence with no tokens")
        tags = obj.get("tags")
        if tags is None and (labelled or (sentences and sentences[0].tags is not None)):
            raise BertkitError(f"{path}:{n}: no \"tags\" list" + ("" if labelled else " (the lines before have one)"))
        if tags is not None and sentences and sentences[0].tags is None:
            raise BertkitError(f"{path}:{n}: a \"tags\" list, which the lines before have not")
        if tags is not None:
            if not isinstance(tags, list) or len(tags) != len(words):
                count = f"{len(tags)} tags" if isinstance(tags, list) else "\"tags\" is not a list"
                raise BertkitError(f"{path}:{n}: {count} for {len(words)} tokens")
            for i, t in enumerate(tags):
                if not isinstance(t, str) or not is_tag(t):
                    raise BertkitError(f"{path}:{n}: tag {i} ({t!r:.40}) is not O, B-TYPE or I-TYPE")
        sentences.append(Sentence(words, tags, [n] * len(words)))
    if not sentences:
        raise BertkitError(f"{path}: empty file: no sentence (expected JSON Lines {{\"tokens\": [...], \"tags\": [...]}})")
    return sentences


def read_tagged(path: str | os.PathLike, fmt: str | None = None, tag_column: int | None = None,
                labelled: bool = True) -> list[Sentence]:
    """The sentences of a CoNLL or JSON Lines file (see `file_format`); with `labelled`, every
    sentence must have its tags."""
    if file_format(path, fmt) == "jsonl":
        if tag_column is not None:
            raise BertkitError(f"{path}: --tag_column applies to CoNLL files, not JSON Lines")
        return read_jsonl(path, labelled)
    return read_conll(path, tag_column, labelled)


def tag_scheme(sentences: Sequence[Sentence], path: str | os.PathLike, given: str = "auto",
               warn=print) -> str:
    """The scheme of a file's tags: `given` (IOB1 or IOB2), or with "auto" the one that more of its
    chunk starts fit (an I- tag starting a chunk is IOB1's, a B- tag starting one after O or another
    type IOB2's; IOB2 when none tells). Tags that do not fit the scheme are counted in a warning
    naming the first line: real files have a few (CoNLL-2003's eng.train, IOB1, has one B- after O).
    The entities are read the same way in both schemes."""
    lines: dict[str, list[int]] = {scheme: [] for scheme in SCHEMES}  # scheme -> lines of the tags only it allows
    for s in sentences:
        for scheme, words in zip(SCHEMES, scheme_evidence(s.tags or ())):
            lines[scheme] += [s.lines[i] for i in words]
    if given == "auto":
        given = "IOB1" if len(lines["IOB1"]) > len(lines["IOB2"]) else "IOB2"
    other = lines[SCHEMES[1 - SCHEMES.index(given)]]
    if other:
        why = "an I- tag starting a chunk" if given == "IOB2" else "a B- tag starting a chunk after O or another type"
        warn(f"warning: {path}:{other[0]}: {len(other)} tag(s) do not fit {given} ({why}, first here); "
             "their entities are counted as conlleval counts them")
    return given


def check_tags(sentences: Sequence[Sentence], labels: Sequence[str], path: str | os.PathLike) -> None:
    """Every tag of `sentences` must be one of the model's `labels` (those of the training file)."""
    known = set(labels)
    for s in sentences:
        for tag, line in zip(s.tags or (), s.lines):
            if tag not in known:
                raise BertkitError(f"{path}:{line}: tag {tag!r} never appears in the training file "
                                   f"(the model knows {', '.join(labels)})")


# ---- features and batches ---------------------------------------------------------------------

def make_features(sentences: Sequence[Sentence], tokenizer, max_seq_length: int,
                  label_ids: dict[str, int]) -> tuple[list[TokenFeature], int]:
    """The windows of every sentence (see the module docstring), and how many sentences were cut
    into more than one."""
    budget = max_seq_length - 2
    if budget < 1:
        raise BertkitError(f"--max_seq_length must be at least 3 for a tagger, got {max_seq_length}")
    pieces = tokenizer.encode_words([s.words for s in sentences])
    features, cut = [], 0
    for si, (s, words) in enumerate(zip(sentences, pieces)):
        windows = 0
        w = 0
        while w < len(words):
            ids, labels, starts = [tokenizer.cls_id], [IGNORE], []
            first_word = w
            while w < len(words) and (w == first_word or len(ids) - 1 + len(words[w]) <= budget):
                word = words[w][:budget]
                starts.append(len(ids))
                ids += word
                labels += [label_ids[s.tags[w]] if s.tags is not None else IGNORE] + [IGNORE] * (len(word) - 1)
                w += 1
            ids.append(tokenizer.sep_id)
            labels.append(IGNORE)
            features.append(TokenFeature(ids, labels, starts, si, first_word))
            windows += 1
        cut += windows > 1
    return features, cut


def collate(features: Sequence[TokenFeature], pad_id: int = 0,
            pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """A batch padded to its own longest window: input_ids, token_type_ids (all 0), attention_mask
    and labels (IGNORE at padding) (B, T) int64, and `first` (B, T) bool, True at each word's first
    piece (where a tag is predicted)."""
    ids = pad_rows([f.input_ids for f in features], pad_id, pad_to_multiple_of)  # (B, T)
    first = torch.zeros(ids.shape, dtype=torch.bool)  # (B, T)
    for i, f in enumerate(features):
        first[i, f.starts] = True
    return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids),
            "attention_mask": pad_rows([[1] * len(f.input_ids) for f in features], 0, pad_to_multiple_of),
            "labels": pad_rows([f.labels for f in features], IGNORE, pad_to_multiple_of), "first": first}


def join_windows(features: Sequence[TokenFeature], rows: Sequence, num_sentences: int) -> list[list]:
    """Per sentence, the per-word outputs of its windows (`rows[i]`: one item per word of
    features[i]) put back together in word order."""
    out: list[list] = [[] for _ in range(num_sentences)]
    for f, r in sorted(zip(features, rows), key=lambda fr: (fr[0].sentence, fr[0].word)):
        out[f.sentence].extend(r)
    return out


# ---- output -----------------------------------------------------------------------------------

def write_conll(path: str | os.PathLike, sentences: Sequence[Sentence], predicted: Sequence[Sequence[str]]) -> None:
    """Predictions in the format conlleval reads: `word gold predicted` per line (`word predicted`
    when the sentences have no tags), a blank line after each sentence."""
    lines = []
    for s, tags in zip(sentences, predicted, strict=True):
        gold = s.tags if s.tags is not None else [None] * len(s.words)
        lines += [" ".join(x for x in (w, g, p) if x is not None) for w, g, p in zip(s.words, gold, tags, strict=True)]
        lines.append("")
    write_atomic(path, "".join(line + "\n" for line in lines).encode("utf-8"))
