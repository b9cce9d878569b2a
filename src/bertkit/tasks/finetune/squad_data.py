"""SQuAD v1.1 / v2.0: reading, windowed features and batches; turning start/end logits back into
answer text (that last part in squad_predict.py). The semantics are those of Google's run_squad.py (the seed's), written afresh:

- a context is split into words on whitespace (space, tab, CR, LF, U+202F); an answer's start and end
  words come from its `answer_start` and the length of its text;
- each word is WordPiece-tokenized on its own, keeping token -> word maps;
- a feature is `[CLS] question [SEP] context window [SEP]`; windows of at most
  `max_seq_length - len(question) - 3` tokens start `doc_stride` tokens apart;
- a token belongs to the window where min(left context, right context) + 0.01 * window length is
  highest ("max context"); only there may an answer start;
- a predicted span is mapped back to the words it covers and trimmed to the characters that the
  predicted tokens stand for (`final_text`).
"""

from __future__ import annotations

import bisect
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from bertkit import BertkitError
from bertkit.tasks.finetune.batching import pad_rows

# Google's run_squad.py defaults.
MAX_SEQ_LENGTH, DOC_STRIDE, MAX_QUERY_LENGTH = 384, 128, 64
N_BEST_SIZE, MAX_ANSWER_LENGTH = 20, 30
# The characters run_squad.py splits a context on: Python's str.split() would also split on
# no-break spaces and the like, which would move the answers' word offsets.
_WORD = re.compile(r"[^ \t\r\n\u202f]+")
# null_odds of a v2.0 question for which no window offers any valid span: only "" is possible.
NO_SPAN_ODDS = 1e6


@dataclass
class SquadExample:
    """One question. `words` is the context split on whitespace. For training, `answer_text` is the
    answer learnt from (the first one given) and `start_word`/`end_word` the words it covers;
    they are "" and -1 for an impossible question or when not training. `answers` holds every gold
    answer text."""
    qid: str
    question: str
    context: str
    words: list[str]
    answers: list[str]
    answer_text: str = ""
    start_word: int = -1
    end_word: int = -1
    is_impossible: bool = False


class Examples(list):
    """The examples read from a file (a plain list of SquadExample), plus `skipped`: the
    (question id, reason) of each training question left out because its answer could not be
    placed in its context."""

    def __init__(self, items=(), skipped: list[tuple[str, str]] | None = None):
        super().__init__(items)
        self.skipped: list[tuple[str, str]] = skipped or []


@dataclass
class SquadFeature:
    """One window of one example. Positions count from [CLS] = 0. The window's context tokens sit at
    positions `context_start ... context_start + len(token_to_word) - 1`; `token_to_word[i]` is the
    example word that context token i comes from, and `max_context[i]` whether this window is that
    token's best. For training, `start_position`/`end_position` mark the answer's tokens, or are 0
    ([CLS]) when the answer is not wholly inside the window or the question has no answer; None when
    not training."""
    unique_id: int
    example_index: int
    window_index: int
    input_ids: list[int]
    token_type_ids: list[int]
    tokens: list[str]
    context_start: int
    token_to_word: list[int]
    max_context: list[bool]
    start_position: int | None = None
    end_position: int | None = None


# ---- reading ----------------------------------------------------------------------------------

def load_json(path: str | os.PathLike) -> object:
    """Parse a JSON file; a missing file or malformed JSON is a BertkitError naming line and column."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise BertkitError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise BertkitError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    except OSError as e:
        raise BertkitError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BertkitError(f"{path}:{e.lineno}:{e.colno}: malformed JSON ({e.msg})") from None
    except RecursionError:  # "[[[[..." deeper than the parser's stack
        raise BertkitError(f"{path}: malformed JSON (nested too deeply)") from None


def iter_questions(data: object, path: str | os.PathLike):
    """Yield (context, qa) for every question of a parsed SQuAD file, checking the structure."""
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise BertkitError(f"{path}: not a SQuAD file (expected an object with a 'data' list)")
    for a, article in enumerate(data["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise BertkitError(f"{path}: article {a} has no 'paragraphs' list")
        for p, paragraph in enumerate(paragraphs):
            where = f"{path}: article {a}, paragraph {p}"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("context"), str):
                raise BertkitError(f"{where} has no 'context' text")
            if not isinstance(paragraph.get("qas"), list):
                raise BertkitError(f"{where} has no 'qas' list")
            for qa in paragraph["qas"]:
                if not isinstance(qa, dict) or not isinstance(qa.get("id"), str):
                    raise BertkitError(f"{where}: a question has no 'id' text")
                if not isinstance(qa.get("question"), str):
                    raise BertkitError(f"{path}: question {qa['id']} has no 'question' text")
                answers = qa.get("answers", [])
                if not isinstance(answers, list) or not all(
                        isinstance(x, dict) and isinstance(x.get("text"), str) for x in answers):
                    raise BertkitError(f"{path}: question {qa['id']}: 'answers' must be a list of "
                                       "objects with a 'text'")
                yield paragraph["context"], qa


def split_words(text: str) -> tuple[list[str], list[int]]:
    """The whitespace-separated words of `text` and the character offset where each starts."""
    words, starts = [], []
    for m in _WORD.finditer(text):
        words.append(m.group())
        starts.append(m.start())
    return words, starts


def read_squad(path: str | os.PathLike, is_training: bool, version_2: bool = False) -> Examples:
    """Read a SQuAD v1.1 or v2.0 JSON file.

    For training, each answerable question learns from its first answer; a question whose answer text
    is not found at its `answer_start` is skipped and listed in the result's `skipped` (Google's
    run_squad.py logs "Could not find answer" and drops it). With `version_2`, a question marked
    `is_impossible` is kept with no answer span.
    """
    data = load_json(path)
    examples = Examples()
    seen: set[str] = set()
    words: list[str] = []
    starts: list[int] = []
    last_context = None
    for context, qa in iter_questions(data, path):
        qid = qa["id"]
        if qid in seen:
            raise BertkitError(f"{path}: question id {qid} appears twice")
        seen.add(qid)
        if context is not last_context:  # the questions of one paragraph share its words
            words, starts = split_words(context)
            last_context = context
        impossible = qa.get("is_impossible", False) if version_2 else False
        if not isinstance(impossible, bool):
            raise BertkitError(f"{path}: question {qid}: 'is_impossible' must be true or false")
        ex = SquadExample(qid, qa["question"], context, words, [x["text"] for x in qa.get("answers", [])],
                          is_impossible=impossible)
        if is_training and not impossible:
            reason = _place_answer(ex, qa.get("answers", []), starts)
            if reason:
                examples.skipped.append((qid, reason))
                continue
        examples.append(ex)
    return examples


def _place_answer(ex: SquadExample, answers: list[dict], starts: list[int]) -> str | None:
    """Set the example's training answer and its words; return why it cannot be placed, or None."""
    if not answers:
        return "no answer given"
    answer = answers[0]
    text, offset = answer["text"], answer.get("answer_start")
    if not isinstance(offset, int) or isinstance(offset, bool):
        return "answer_start is not a whole number"
    if not text.strip():
        return "empty answer text"
    last = offset + len(text) - 1
    if offset < 0 or last >= len(ex.context):
        return f"answer_start {offset} puts the answer outside the context"
    start_word = bisect.bisect_right(starts, offset) - 1
    end_word = bisect.bisect_right(starts, last) - 1
    if start_word < 0:
        return f"answer_start {offset} is before the context's first word"
    covered = " ".join(ex.words[start_word:end_word + 1])
    if covered.find(" ".join(text.split())) == -1:
        return f"answer {text[:40]!r} not found at answer_start {offset}"
    ex.answer_text, ex.start_word, ex.end_word = text, start_word, end_word
    return None


# ---- features ---------------------------------------------------------------------------------

def windows(n_tokens: int, max_tokens: int, doc_stride: int) -> list[tuple[int, int]]:
    """(start, length) of each window over `n_tokens` context tokens: at most `max_tokens` long,
    starting `doc_stride` tokens after the previous one, the last one reaching the end. An empty
    context still gets one (empty) window so that every question has a feature."""
    spans, start = [], 0
    while True:
        length = min(n_tokens - start, max_tokens)
        spans.append((start, length))
        if start + length >= n_tokens:
            return spans
        start += min(length, doc_stride)


def best_windows(n_tokens: int, spans: list[tuple[int, int]]) -> list[int]:
    """For each context token, the window that gives it the most context: the highest
    min(tokens to its left, tokens to its right) + 0.01 * window length; the first on ties."""
    best = [-1] * n_tokens
    score = [-math.inf] * n_tokens
    for w, (start, length) in enumerate(spans):
        end = start + length - 1
        for pos in range(start, end + 1):
            s = min(pos - start, end - pos) + 0.01 * length
            if s > score[pos]:
                score[pos], best[pos] = s, w
    return best


def improve_span(doc_ids: list[int], start: int, end: int, answer_ids: list[int]) -> tuple[int, int]:
    """The first sub-span of tokens start..end that tokenizes exactly like the answer text (the
    answer "1895" inside the word "(1895)." covers only its "1895" token); the span itself if none."""
    for s in range(start, end + 1):
        for e in range(end, s - 1, -1):
            if doc_ids[s:e + 1] == answer_ids:
                return s, e
    return start, end


def make_features(examples: Sequence[SquadExample], tokenizer, max_seq_length: int = MAX_SEQ_LENGTH,
                  doc_stride: int = DOC_STRIDE, max_query_length: int = MAX_QUERY_LENGTH,
                  is_training: bool = False) -> list[SquadFeature]:
    """Windowed `[CLS] question [SEP] context [SEP]` features for every example, in order.

    Questions are cut to `max_query_length` tokens. With `is_training`, each feature carries the
    answer's start and end positions (0 when the answer is outside the window or impossible).
    """
    if doc_stride < 1:
        raise BertkitError(f"--doc_stride must be at least 1, got {doc_stride}")
    if max_query_length < 1:
        raise BertkitError(f"--max_query_length must be at least 1, got {max_query_length}")
    if max_seq_length - max_query_length - 3 < 1:
        raise BertkitError(f"--max_seq_length ({max_seq_length}) must exceed --max_query_length "
                           f"({max_query_length}) + 3, to leave room for the context")
    queries = tokenizer.encode_batch([ex.question for ex in examples])
    # Tokenize each distinct word once: the questions of a paragraph, and paragraphs, repeat them.
    vocab_words = list(dict.fromkeys(w for ex in _distinct_contexts(examples) for w in ex.words))
    word_ids = dict(zip(vocab_words, tokenizer.encode_batch(vocab_words)))
    answer_ids = (tokenizer.encode_batch([ex.answer_text for ex in examples]) if is_training
                  else [[] for _ in examples])
    inv = tokenizer.inv_vocab
    cls, sep = tokenizer.cls_id, tokenizer.sep_id

    features: list[SquadFeature] = []
    last_context = None
    for ei, ex in enumerate(examples):
        if ex.words is not last_context:
            last_context = ex.words
            doc_ids, tok_to_word, word_to_tok = [], [], []
            for wi, word in enumerate(ex.words):
                word_to_tok.append(len(doc_ids))
                pieces = word_ids[word]
                doc_ids += pieces
                tok_to_word += [wi] * len(pieces)
            doc_tokens = [inv[i] for i in doc_ids]
            spans_for: dict[int, tuple[list, list]] = {}  # question length -> (spans, best windows)
        query = queries[ei][:max_query_length]
        if len(query) not in spans_for:
            spans = windows(len(doc_ids), max_seq_length - len(query) - 3, doc_stride)
            spans_for[len(query)] = (spans, best_windows(len(doc_ids), spans))
        spans, best = spans_for[len(query)]

        tok_start = tok_end = -1
        if is_training and not ex.is_impossible:
            if ex.start_word < 0:
                raise ValueError(f"question {ex.qid} has no answer span: read it with is_training=True")
            tok_start = word_to_tok[ex.start_word]
            tok_end = (word_to_tok[ex.end_word + 1] - 1 if ex.end_word + 1 < len(ex.words)
                       else len(doc_ids) - 1)
            tok_start, tok_end = improve_span(doc_ids, tok_start, tok_end, answer_ids[ei])

        head = [cls, *query, sep]
        offset = len(head)
        for w, (start, length) in enumerate(spans):
            input_ids = head + doc_ids[start:start + length] + [sep]
            types = [0] * offset + [1] * (length + 1)
            tokens = ["[CLS]", *(inv[i] for i in query), "[SEP]", *doc_tokens[start:start + length], "[SEP]"]
            start_pos = end_pos = None
            if is_training:
                start_pos = end_pos = 0
                if tok_start >= start and tok_end <= start + length - 1 and not ex.is_impossible:
                    start_pos, end_pos = tok_start - start + offset, tok_end - start + offset
            features.append(SquadFeature(
                unique_id=len(features), example_index=ei, window_index=w, input_ids=input_ids,
                token_type_ids=types, tokens=tokens, context_start=offset,
                token_to_word=tok_to_word[start:start + length],
                max_context=[best[p] == w for p in range(start, start + length)],
                start_position=start_pos, end_position=end_pos))
    return features


def _distinct_contexts(examples: Sequence[SquadExample]) -> list[SquadExample]:
    out, seen = [], set()
    for ex in examples:
        if id(ex.words) not in seen:
            seen.add(id(ex.words))
            out.append(ex)
    return out


def collate(features: Sequence[SquadFeature], pad_id: int = 0,
            pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """A batch padded to its own longest window: input_ids, token_type_ids, attention_mask (B, T)
    int64; feature_index (B,) (each feature's `unique_id`, to match logits back to features); and
    start_positions, end_positions (B,) when the features carry training targets."""
    batch = {
        "input_ids": pad_rows([f.input_ids for f in features], pad_id, pad_to_multiple_of),  # (B, T)
        "token_type_ids": pad_rows([f.token_type_ids for f in features], 0, pad_to_multiple_of),  # (B, T)
        "attention_mask": pad_rows([[1] * len(f.input_ids) for f in features], 0, pad_to_multiple_of),  # (B, T)
        "feature_index": torch.tensor([f.unique_id for f in features], dtype=torch.int64),  # (B,)
    }
    if all(f.start_position is not None for f in features):
        batch["start_positions"] = torch.tensor([f.start_position for f in features], dtype=torch.int64)  # (B,)
        batch["end_positions"] = torch.tensor([f.end_position for f in features], dtype=torch.int64)  # (B,)
    return batch
