"""SQuAD predictions: start/end logits of the windowed features back to answer text, n-best lists
and, for v2.0, no-answer odds (Google's run_squad.py post-processing, written afresh)."""

from __future__ import annotations

import bisect
import collections
import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tokenizers import normalizers, pre_tokenizers

from bertkit.io import write_json
from bertkit.tasks.finetune.squad_data import MAX_ANSWER_LENGTH, N_BEST_SIZE, NO_SPAN_ODDS, SquadExample, SquadFeature


@lru_cache(maxsize=2)
def _basic_tokenizer(lowercase: bool):
    """Google's BasicTokenizer (no WordPiece): clean, split CJK, lower case and strip accents when
    uncased, split on whitespace and punctuation."""
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
        write_json(path, obj)
    return [p for p, _ in out]
