"""What every sequence classification (and regression) task shares: examples and their features,
padded batches, the loss, the logits, the scores and the files of predictions. Used by MRPC, the
GLUE tasks, own files (`finetune classify`) and `bertkit predict`.

A regression head has one output, trained with the mean squared error; a classifier has one
output per label, trained with cross-entropy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bertkit import BertkitError
from bertkit.io import write_atomic
from bertkit.task_record import TaskRecord
from bertkit.tasks.finetune import metrics
from bertkit.tasks.finetune.batching import pad_rows
from bertkit.tokenizer import truncate_seq_pair


@dataclass
class Example:
    """One text or text pair. `guid`: the file's index column (GLUE's test files) or the data row's
    number (0-based); `label`: a label name, a float (regression) or None; `where`: file:line."""
    guid: str
    text_a: str
    text_b: str | None
    label: str | float | None
    where: str = ""


@dataclass
class Feature:
    """`[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]` ids and token types, unpadded; the label's index
    (classification), value (regression) or None."""
    input_ids: list[int]
    token_type_ids: list[int]
    label: int | float | None


def check_labels(examples: Sequence[Example], labels: Sequence[str] | None, column: str, known: str) -> None:
    """Refuse a label outside `labels` (or, for regression, one that is not a number): one line
    naming the file, line and column. `known` says where the label set comes from."""
    allowed = set(labels) if labels is not None else None
    for ex in examples:
        if ex.label is None:
            continue
        if allowed is None:
            if not isinstance(ex.label, float):
                raise BertkitError(f"{ex.where}: column {column!r}: {ex.label!r} is not a number (regression)")
        elif ex.label not in allowed:
            shown = ", ".join(list(labels)[:10]) + (" ..." if len(labels) > 10 else "")
            raise BertkitError(f"{ex.where}: column {column!r}: label {ex.label!r} is not among {known} ({shown})")


def make_features(examples: Sequence[Example], tokenizer, max_seq_length: int,
                  labels: Sequence[str] | None) -> list[Feature]:
    """Token ids of every example, a pair's longer side cut first to fit `max_seq_length` and a
    single text cut at its end (Google's run_classifier.py); labels become their index in `labels`
    (None: regression, the float as it is). Every text is tokenized in one batch."""
    if max_seq_length < 3:
        raise BertkitError(f"--max_seq_length must be at least 3, got {max_seq_length}")
    index = {name: i for i, name in enumerate(labels)} if labels is not None else None
    texts = [t for ex in examples for t in (ex.text_a, ex.text_b) if t is not None]
    ids = iter(tokenizer.encode_batch(texts))
    features = []
    for ex in examples:
        a = next(ids)
        b = next(ids) if ex.text_b is not None else None
        if b is None:
            del a[max_seq_length - 2:]
        else:
            truncate_seq_pair(a, b, max_seq_length - 3)
        input_ids, types = tokenizer.build_pair(a, b)
        label = None if ex.label is None else index[ex.label] if index is not None else float(ex.label)
        features.append(Feature(input_ids, types, label))
    return features


def collate(features: Sequence, pad_id: int = 0, pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """A batch padded to its own longest sequence: input_ids, token_type_ids, attention_mask
    (B, T) int64, and labels (B,) when every feature has one: int64 class indexes, or float32
    values for regression."""
    batch = {
        "input_ids": pad_rows([f.input_ids for f in features], pad_id, pad_to_multiple_of),  # (B, T)
        "token_type_ids": pad_rows([f.token_type_ids for f in features], 0, pad_to_multiple_of),  # (B, T)
        "attention_mask": pad_rows([[1] * len(f.input_ids) for f in features], 0, pad_to_multiple_of),  # (B, T)
    }
    labels = [f.label for f in features]
    if all(label is not None for label in labels):
        regression = isinstance(labels[0], float)
        batch["labels"] = torch.tensor(labels, dtype=torch.float32 if regression else torch.int64)  # (B,)
    elif any(label is not None for label in labels):
        raise ValueError("a batch mixes labelled and unlabelled examples")
    return batch


def classification_loss(model, b: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy (and the batch's accuracy) for class labels; the mean squared error of the one
    output for float labels (regression)."""
    logits = model(b["input_ids"], b["token_type_ids"], b["attention_mask"])  # (B, K)
    if b["labels"].is_floating_point():
        return F.mse_loss(logits[:, 0].float(), b["labels"]), {}
    loss = F.cross_entropy(logits.float(), b["labels"])
    with torch.no_grad():
        acc = (logits.argmax(-1) == b["labels"]).float().mean()
    return loss, {"accuracy": acc}


def logit_rows(model, b: dict) -> list[np.ndarray]:
    logits = model(b["input_ids"], b["token_type_ids"], b["attention_mask"])  # (B, K)
    return list(logits.float().cpu().numpy())


def softmax(logits: np.ndarray) -> np.ndarray:
    """(N, K) float64 probabilities."""
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of (N, K) logits against (N,) class indexes."""
    z = logits.astype(np.float64)
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def scores(logits: np.ndarray, labels: Sequence, problem: str, kind: str) -> dict:
    """The task's scores (metrics.METRICS[kind]), its loss (mean cross-entropy, or mean squared
    error for regression) and the number of examples."""
    if problem == "regression":
        values, gold = logits[:, 0].astype(np.float64), np.asarray(labels, np.float64)
        return {**metrics.regression_scores(values, gold), "loss": float(np.mean((values - gold) ** 2)),
                "examples": len(gold)}
    gold = np.asarray(labels, np.int64)
    return {**metrics.classification_scores(logits.argmax(-1), gold, kind), "loss": cross_entropy(logits, gold),
            "examples": len(gold)}


def predictions(logits: np.ndarray, record: TaskRecord) -> list[str]:
    """Each example's predicted label name, or its value (repr precision) for regression."""
    if record.labels is None:
        return [repr(float(v)) for v in logits[:, 0]]
    return [record.labels[i] for i in logits.argmax(-1)]


def prediction_objects(logits: np.ndarray, record: TaskRecord) -> list[dict]:
    """What `bertkit predict` writes per input: the label, its probability and every label's; or the value."""
    if record.labels is None:
        return [{"value": float(v)} for v in logits[:, 0]]
    out = []
    for p in softmax(logits):
        best = int(p.argmax())
        out.append({"label": record.labels[best], "probability": float(p[best]),
                    "probabilities": {name: float(x) for name, x in zip(record.labels, p)}})
    return out


# ---- files -------------------------------------------------------------------------------------

def write_lines(path: str | os.PathLike, lines: Sequence[str]) -> None:
    write_atomic(path, "".join(line + "\n" for line in lines).encode("utf-8"))


def write_google_eval_results(path: Path, results: dict, global_step: int, keys: Sequence[str] = ("accuracy",)) -> None:
    """Google's run_classifier.py eval_results.txt, which scripts written for the seed read: sorted
    `key = value` lines of eval_<key> for each of `keys` (Google's: accuracy), eval_loss (mean loss
    per example), global_step (the steps trained in this run; 0 when only evaluating) and loss. (The
    Estimator's `loss` is the mean of its batches' losses; bertkit's evaluation batches are cut by
    length, so it is the same mean per example here.)"""
    google = {**{f"eval_{k}": results[k] for k in keys}, "eval_loss": results["loss"], "global_step": global_step,
              "loss": results["loss"]}
    write_lines(path, [f"{k} = {v}" for k, v in sorted(google.items())])


def write_test_results(path: Path, logits: np.ndarray, record: TaskRecord) -> None:
    """Google's test_results.tsv: one line per example, its class probabilities tab-separated, no
    header (for regression, the predicted value)."""
    if record.labels is None:
        write_lines(path, [repr(float(v)) for v in logits[:, 0]])
    else:
        write_lines(path, ["\t".join(repr(float(x)) for x in p) for p in softmax(logits)])


def write_submission(path: Path, guids: Sequence[str], predicted: Sequence[str]) -> None:
    """GLUE's leaderboard format: a header `index<TAB>prediction`, then one row per test example."""
    if len(guids) != len(predicted):
        raise ValueError(f"{len(predicted)} predictions for {len(guids)} examples")
    write_lines(path, ["index\tprediction", *(f"{g}\t{p}" for g, p in zip(guids, predicted))])


def write_eval_predictions(path: Path, examples: Sequence[Example], logits: np.ndarray, record: TaskRecord) -> None:
    """index, gold label, prediction, and each label's probability (repr precision) per example; for
    regression index, gold value, prediction."""
    head = ["index", "label", "prediction", *(record.labels or ())]
    predicted = predictions(logits, record)
    probs = softmax(logits) if record.labels is not None else np.zeros((len(examples), 0))
    write_lines(path, ["\t".join(head)] + ["\t".join([ex.guid, str(ex.label), pred, *(repr(float(x)) for x in p)])
                                           for ex, pred, p in zip(examples, predicted, probs)])
