"""SQuAD scoring as the official evaluation scripts define it (v1.1, and v2.0 for data with
unanswerable questions), and the `bertkit squad-eval` command.

An answer is normalised by lower-casing it, deleting ASCII punctuation (Python's
`string.punctuation`), deleting the whole words a, an and the, and collapsing whitespace. Exact match
is equality of the normalised texts; F1 compares their words as multisets
(precision = shared / predicted words, recall = shared / gold words). A question scores the best
value over its gold answers; the totals are percentages over all questions of the data file.

v2.0: a question without answers (or marked `is_impossible`) has the single gold answer "", and a
prediction that normalises to nothing matches it with exact match and F1 of 1. Gold answers that
normalise to nothing are ignored. With `--na-prob-file`, a question whose no-answer probability
(or null odds) exceeds `--na-prob-thresh` counts as answered "". Results are also given separately
for the answerable (HasAns) and unanswerable (NoAns) questions.

A question missing from the predictions scores 0 in both versions (the official v2.0 script leaves
it out of the total instead); the count is reported on stderr.
"""

from __future__ import annotations

import collections
import json
import re
import string
import sys
from typing import Sequence

from bertkit import BertkitError
from bertkit.flags import ArgumentParser
from bertkit.io import write_json
from bertkit.tasks.finetune.squad_data import load_json

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(c for c in text if c not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """v1.1 F1: 0 when the normalised texts share no word (also when either is empty)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    shared = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(pred), shared / len(ref)
    return 2 * precision * recall / (precision + recall)


def f1_score_v2(prediction: str, gold: str) -> float:
    """v2.0 F1: when either side normalises to no words, 1 if both do, else 0."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    return f1_score(prediction, gold)


def _questions(data: object, source: str) -> list[tuple[str, list[str], bool]]:
    """(id, gold answer texts, has an answer) for every question of a parsed SQuAD file."""
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise BertkitError(f"{source}: not a SQuAD file (expected an object with a 'data' list)")
    out = []
    try:
        for article in data["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    golds = [a["text"] for a in qa.get("answers", [])]
                    if qa.get("is_impossible", False):
                        golds = []
                    if not all(isinstance(g, str) for g in golds) or not isinstance(qa["id"], str):
                        raise TypeError
                    out.append((qa["id"], golds, bool(golds)))
    except (KeyError, TypeError, AttributeError):
        raise BertkitError(f"{source}: malformed SQuAD structure (each article needs 'paragraphs', "
                           "each paragraph 'qas', each question an 'id' and 'answers' with 'text')") from None
    return out


def evaluate(data: object, predictions: dict[str, str], na_probs: dict[str, float] | None = None,
             na_prob_thresh: float = 1.0, source: str = "dataset") -> dict[str, float]:
    """Score `predictions` (question id -> answer text) against a parsed SQuAD file.

    Returns {"exact_match", "f1", "total", "missing"} for v1.1 data. For v2.0 data (with
    unanswerable questions) the keys are those the official v2.0 script prints: "exact", "f1",
    "total", the HasAns_/NoAns_ breakdown ("HasAns_exact", "HasAns_f1", "HasAns_total", ...), and
    with `na_probs` the best no-answer thresholds ("best_exact", "best_exact_thresh", "best_f1",
    "best_f1_thresh"); and "missing".
    """
    questions = _questions(data, source)
    version_2 = any(not has for _, _, has in questions)
    exact: dict[str, float] = {}
    f1: dict[str, float] = {}
    missing = 0
    for qid, golds, has_answer in questions:
        if qid not in predictions:
            missing += 1
            exact[qid] = f1[qid] = 0.0
            continue
        pred = predictions[qid]
        if not isinstance(pred, str):
            raise BertkitError(f"prediction for question {qid} is not text")
        if version_2:
            golds = [g for g in golds if normalize_answer(g)] or [""]
            exact[qid] = max(exact_match_score(pred, g) for g in golds)
            f1[qid] = max(f1_score_v2(pred, g) for g in golds)
            if na_probs is not None and na_probs.get(qid, 0.0) > na_prob_thresh:
                exact[qid] = f1[qid] = float(not has_answer)
        else:
            exact[qid] = max(exact_match_score(pred, g) for g in golds) if golds else 0.0
            f1[qid] = max(f1_score(pred, g) for g in golds) if golds else 0.0
    ids = [qid for qid, _, _ in questions]
    result = _totals(exact, f1, ids)
    result["missing"] = missing
    if version_2:
        for name, want in (("HasAns", True), ("NoAns", False)):
            part = [qid for qid, _, has in questions if has == want]
            if part:
                result.update({f"{name}_{k}": v for k, v in _totals(exact, f1, part).items()})
        if na_probs is not None:
            raw_exact, raw_f1 = _raw_scores(questions, predictions)
            has = {qid: h for qid, _, h in questions}
            for key, raw in (("exact_match", raw_exact), ("f1", raw_f1)):
                best, thresh = _best_threshold(predictions, raw, na_probs, has)
                result[f"best_{key}"], result[f"best_{key}_thresh"] = best, thresh
        # The official v2.0 script says "exact" where v1.1's says "exact_match".
        result = {k.replace("exact_match", "exact"): v for k, v in result.items()}
    return result


def _totals(exact: dict[str, float], f1: dict[str, float], ids: Sequence[str]) -> dict[str, float]:
    n = len(ids)
    return {"exact_match": 100.0 * sum(exact[q] for q in ids) / n if n else 0.0,
            "f1": 100.0 * sum(f1[q] for q in ids) / n if n else 0.0, "total": n}


def _raw_scores(questions, predictions) -> tuple[dict[str, float], dict[str, float]]:
    """v2.0 scores before any no-answer threshold, for the questions that have a prediction."""
    exact, f1 = {}, {}
    for qid, golds, _ in questions:
        if qid in predictions:
            golds = [g for g in golds if normalize_answer(g)] or [""]
            exact[qid] = max(exact_match_score(predictions[qid], g) for g in golds)
            f1[qid] = max(f1_score_v2(predictions[qid], g) for g in golds)
    return exact, f1


def _best_threshold(predictions, scores, na_probs, has_answer) -> tuple[float, float]:
    """The no-answer threshold that maximises the score: start from answering "" everywhere (all
    unanswerable questions right), then admit questions in order of rising no-answer probability."""
    score = best = sum(1 for q in has_answer if not has_answer[q])
    thresh = 0.0
    for qid in sorted(na_probs, key=lambda q: na_probs[q]):
        if qid not in scores:
            continue
        if has_answer[qid]:
            score += scores[qid]
        elif predictions[qid]:
            score -= 1
        if score > best:
            best, thresh = score, na_probs[qid]
    return 100.0 * best / len(scores) if scores else 0.0, thresh


def main(argv: list[str]) -> int:
    p = ArgumentParser(prog="bertkit squad-eval", description=(
        "Score SQuAD predictions with the official definitions (v1.1; v2.0 when the data has "
        "unanswerable questions). Prints a JSON object named as the official script of the version prints "
        "it: v1.1 exact_match and f1; v2.0 exact, f1, total, HasAns_*, NoAns_* and, given null odds, "
        "best_exact, best_exact_thresh, best_f1, best_f1_thresh (percentages)."))
    p.add_argument("data_file", metavar="DATA_JSON", help="The SQuAD data file (dev-v1.1.json, dev-v2.0.json).")
    p.add_argument("pred_file", metavar="PREDICTIONS_JSON", help="Question id -> answer text (predictions.json).")
    p.add_argument("--na-prob-file", "-n", "--na_prob_file", dest="na_prob_file",
                   help="Question id -> no-answer probability or null odds (null_odds.json); v2.0 only.")
    p.add_argument("--na-prob-thresh", "-t", "--na_prob_thresh", dest="na_prob_thresh", type=float, default=1.0,
                   help="Predict no answer where the no-answer probability exceeds this (default 1.0).")
    p.add_argument("--out-file", "-o", "--out_file", dest="out_file", help="Also write the scores to this JSON file.")
    args = p.parse_args(argv)

    data = load_json(args.data_file)
    predictions = load_json(args.pred_file)
    if not isinstance(predictions, dict):
        raise BertkitError(f"{args.pred_file}: expected a JSON object of question id -> answer text")
    for qid, text in predictions.items():
        if not isinstance(text, str):
            raise BertkitError(f"{args.pred_file}: prediction for question {qid} is not text")
    na_probs = None
    if args.na_prob_file:
        na_probs = load_json(args.na_prob_file)
        if not isinstance(na_probs, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in na_probs.values()):
            raise BertkitError(f"{args.na_prob_file}: expected a JSON object of question id -> number")
    if isinstance(data, dict) and data.get("version") not in (None, "1.1", "v2.0", "2.0"):
        print(f"squad-eval: warning: {args.data_file} has version {data.get('version')!r}; "
              "scoring it as SQuAD", file=sys.stderr)
    result = evaluate(data, predictions, na_probs, args.na_prob_thresh, source=args.data_file)
    if result["missing"]:
        print(f"squad-eval: warning: {result['missing']} of {result['total']} questions have no "
              "prediction and score 0", file=sys.stderr)
    version_2 = "exact" in result
    out = {k: v for k, v in result.items() if k != "missing" and (version_2 or k in ("exact_match", "f1"))}
    text = json.dumps(out)
    print(text)
    if args.out_file:
        write_json(args.out_file, out)
    return 0
