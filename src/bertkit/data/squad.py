"""SQuAD v1.1 / v2.0: reading, windowed features, batches, and turning start/end logits back into
answer text. The semantics are those of Google's run_squad.py (the seed's), written afresh:

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
import collections
import json
import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from bertkit import BertkitError
from bertkit.data.mrpc import pad_rows
from bertkit.io import write_atomic

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


# ---- post-processing --------------------------------------------------------------------------

@lru_cache(maxsize=2)
def _basic_tokenizer(lowercase: bool):
    """Google's BasicTokenizer (no WordPiece): clean, split CJK, lower case and strip accents when
    uncased, split on whitespace and punctuation."""
    from tokenizers import normalizers, pre_tokenizers

    norm = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                      strip_accents=lowercase, lowercase=lowercase)
    pre = pre_tokenizers.BertPreTokenizer()
    return lambda text: [w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text))]


def final_text(pred_text: str, orig_text: str, lowercase: bool, tok_text: str | None = None) -> str:
    """Trim `orig_text` (the original words a span covers, joined by spaces) to the characters that
    `pred_text` (the span's WordPiece tokens de-tokenized, e.g. "1895") stands for.

    The original text is basic-tokenized the way the model saw it; where the predicted text is found
    in that, its position is carried back to the original characters through the two texts with
    their spaces removed. When the texts do not line up character for character (accents that
    changed length, dropped control characters) or the prediction is not found, `orig_text` is
    returned whole, as Google's get_final_text does. `tok_text`, when given, is `orig_text`
    basic-tokenized and joined by spaces (the caller may have it cached).
    """
    if tok_text is None:
        tok_text = " ".join(_basic_tokenizer(lowercase)(orig_text))
    start = tok_text.find(pred_text)
    if start == -1 or not pred_text:
        return orig_text
    end = start + len(pred_text) - 1
    orig_spaces, tok_spaces = _spaces(orig_text), _spaces(tok_text)
    if len(orig_text) - len(orig_spaces) != len(tok_text) - len(tok_spaces):
        return orig_text
    if tok_text[start] == " " or tok_text[end] == " ":
        return orig_text
    # the n-th character that is not a space, counted in tok_text, then found again in orig_text
    first = start - bisect.bisect_left(tok_spaces, start)
    last = end - bisect.bisect_left(tok_spaces, end)
    return orig_text[_nth_non_space(orig_spaces, first): _nth_non_space(orig_spaces, last) + 1]


def _spaces(text: str) -> list[int]:
    out, i = [], text.find(" ")
    while i != -1:
        out.append(i)
        i = text.find(" ", i + 1)
    return out


def _nth_non_space(spaces: list[int], n: int) -> int:
    """The index of the n-th (0-based) character that is not a space, given the spaces' indexes."""
    index = n
    for sp in spaces:
        if sp > index:
            break
        index += 1
    return index


def _top(logits: np.ndarray, n: int) -> np.ndarray:
    """Indexes of the n largest values, largest first, lower index first on ties."""
    return np.argsort(-logits, kind="stable")[:n]


def _row(values) -> np.ndarray:
    """One feature's logits as float64 numbers: a list, a numpy array or a tensor of any float type."""
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def _softmax(scores: list[float]) -> list[float]:
    if not scores:
        return []
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def postprocess(examples: Sequence[SquadExample], features: Sequence[SquadFeature],
                start_logits: Sequence, end_logits: Sequence, n_best_size: int = N_BEST_SIZE,
                max_answer_length: int = MAX_ANSWER_LENGTH, lowercase: bool = True,
                version_2: bool = False, null_score_diff_threshold: float = 0.0,
                ) -> tuple[dict[str, str], dict[str, list[dict]], dict[str, float]]:
    """Answer text for each example from its windows' logits.

    `start_logits[i]`/`end_logits[i]` are feature i's logits (T_i,) or longer (padding is ignored):
    lists, numpy arrays or tensors (bf16 included), or the rows of a (N, T) array.
    In each window the `n_best_size` highest start and end positions are paired; a pair is kept when
    both lie in the context, start <= end, it spans at most `max_answer_length` tokens and the start
    token has its max context in this window. Pairs are ranked by start + end logit; the best
    `n_best_size` distinct texts form the n-best list with softmax probabilities. For v2.0 the null
    score is the lowest [CLS] start + end logit over the windows, and "" is predicted when
    null score - best span score > `null_score_diff_threshold`.

    Returns (predictions qid -> text, n-best qid -> [{text, probability, start_logit, end_logit}],
    null_odds qid -> null score - best span score, empty unless `version_2`).
    """
    if len(start_logits) != len(features) or len(end_logits) != len(features):
        raise ValueError(f"{len(start_logits)} start and {len(end_logits)} end logit rows "
                         f"for {len(features)} features")
    by_example: dict[int, list[int]] = collections.defaultdict(list)
    for fi, f in enumerate(features):
        by_example[f.example_index].append(fi)
    basic = _basic_tokenizer(lowercase)
    basic_words: dict[str, str] = {}  # word -> its basic tokens joined by spaces
    predictions: dict[str, str] = {}
    all_nbest: dict[str, list[dict]] = {}
    null_odds: dict[str, float] = {}
    for ei, ex in enumerate(examples):
        spans = []  # (score, start logit, end logit, feature, start, end)
        null = None  # (score, start logit, end logit)
        for fi in by_example[ei]:
            f = features[fi]
            n = len(f.input_ids)
            sl = _row(start_logits[fi])[:n]  # (T,)
            el = _row(end_logits[fi])[:n]  # (T,)
            if version_2 and (null is None or sl[0] + el[0] < null[0]):
                null = (float(sl[0] + el[0]), float(sl[0]), float(el[0]))
            c0, c1 = f.context_start, f.context_start + len(f.token_to_word)
            ends = [int(e) for e in _top(el, n_best_size) if c0 <= e < c1]
            for s in _top(sl, n_best_size):
                s = int(s)
                if not (c0 <= s < c1) or not f.max_context[s - c0]:
                    continue
                for e in ends:
                    if s <= e and e - s + 1 <= max_answer_length:
                        spans.append((float(sl[s] + el[e]), float(sl[s]), float(el[e]), fi, s, e))
        if null is not None:
            spans.append((null[0], null[1], null[2], -1, 0, 0))  # the null answer competes too
        spans.sort(key=lambda p: p[0], reverse=True)  # stable: window, then index order on ties

        nbest: list[tuple[str, float, float]] = []
        seen: set[str] = set()
        for _, s_logit, e_logit, fi, s, e in spans:
            if len(nbest) >= n_best_size:
                break
            if fi < 0:
                text = ""
            else:
                f = features[fi]
                pieces = " ".join(f.tokens[s:e + 1]).replace(" ##", "").replace("##", "")
                pieces = " ".join(pieces.split())
                words = ex.words[f.token_to_word[s - f.context_start]: f.token_to_word[e - f.context_start] + 1]
                # Basic tokenization never joins across the spaces between words, so the words'
                # cached tokenizations joined are the tokenization of the joined words.
                for w in words:
                    if w not in basic_words:
                        basic_words[w] = " ".join(basic(w))
                tok_text = " ".join(basic_words[w] for w in words if basic_words[w])
                text = final_text(pieces, " ".join(words), lowercase, tok_text)
                if text in seen:
                    continue
            seen.add(text)
            nbest.append((text, s_logit, e_logit))
        if null is not None and "" not in seen:
            nbest.append(("", null[1], null[2]))
        if not nbest:
            nbest.append(("", 0.0, 0.0))  # no valid span at all (Google writes "empty" here)
        probs = _softmax([s + e for _, s, e in nbest])
        all_nbest[ex.qid] = [{"text": t, "probability": p, "start_logit": s, "end_logit": e}
                             for (t, s, e), p in zip(nbest, probs)]
        best = next(((t, s, e) for t, s, e in nbest if t), None)
        if not version_2:
            predictions[ex.qid] = nbest[0][0]
            continue
        if best is None:
            null_odds[ex.qid] = NO_SPAN_ODDS
            predictions[ex.qid] = ""
            continue
        null_score = null[0] if null is not None else 0.0
        diff = null_score - best[1] - best[2]
        null_odds[ex.qid] = diff
        predictions[ex.qid] = "" if diff > null_score_diff_threshold else best[0]
    return predictions, all_nbest, null_odds


def write_predictions(output_dir: str | os.PathLike, predictions: dict[str, str],
                      nbest: dict[str, list[dict]], null_odds: dict[str, float] | None = None) -> list[Path]:
    """Write predictions.json, nbest_predictions.json and, given null odds, null_odds.json, each
    atomically; return their paths."""
    output_dir = Path(output_dir)
    out = [(output_dir / "predictions.json", predictions), (output_dir / "nbest_predictions.json", nbest)]
    if null_odds:
        out.append((output_dir / "null_odds.json", null_odds))
    for path, obj in out:
        write_atomic(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    return [p for p, _ in out]
