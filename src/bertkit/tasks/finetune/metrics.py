"""The scores of sequence classification and regression, as GLUE scores its tasks: accuracy, F1 of
the positive class (MRPC, QQP), macro F1, Matthews correlation (CoLA), Pearson and Spearman
correlation (STS-B; Spearman with tied values given their average rank). NumPy only: the tests
check every function against scikit-learn and SciPy.

A correlation that is undefined (one side constant) counts as 0, as scikit-learn counts Matthews
correlation then; SciPy answers NaN there, which JSON cannot hold.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# The score names each kind of task reports (besides loss and examples); the first is the one a
# table of results shows.
METRICS = {
    "accuracy": ("accuracy",),
    "accuracy_f1": ("f1", "accuracy"),  # MRPC, QQP: F1 of class 1 (the paraphrase, the duplicate)
    "matthews": ("matthews_correlation", "accuracy"),  # CoLA
    "correlation": ("pearson", "spearman"),  # STS-B
    "accuracy_macro_f1": ("accuracy", "macro_f1"),  # own files with any number of classes
}


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    p, y = np.asarray(predictions), np.asarray(labels)
    return float((p == y).mean()) if len(y) else 0.0


def f1(predictions: Sequence[int], labels: Sequence[int], positive: int = 1) -> float:
    """F1 of class `positive`; 0 when it is neither predicted nor present."""
    p, y = np.asarray(predictions) == positive, np.asarray(labels) == positive
    tp, fp, fn = int((p & y).sum()), int((p & ~y).sum()), int((~p & y).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def macro_f1(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """The mean F1 over the classes that are predicted or present."""
    classes = np.union1d(np.asarray(predictions), np.asarray(labels))
    return float(np.mean([f1(predictions, labels, c) for c in classes])) if len(classes) else 0.0


def matthews(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Matthews correlation of two labellings, any number of classes (Gorodkin's R_K): the
    covariance of the one-hot predictions and labels over the square root of their variances."""
    p, y = np.asarray(predictions), np.asarray(labels)
    n = len(y)
    classes = np.union1d(p, y)
    pred_counts = (p[:, None] == classes).sum(0).astype(np.float64)  # (K,)
    true_counts = (y[:, None] == classes).sum(0).astype(np.float64)  # (K,)
    correct = float((p == y).sum())
    cov_py = correct * n - pred_counts @ true_counts
    cov_pp = n * n - pred_counts @ pred_counts
    cov_yy = n * n - true_counts @ true_counts
    if cov_pp == 0 or cov_yy == 0:
        return 0.0
    return float(cov_py / np.sqrt(cov_pp * cov_yy))


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    a, b = np.asarray(x, np.float64), np.asarray(y, np.float64)
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / denominator) if denominator > 0 else 0.0


def average_ranks(x: Sequence[float]) -> np.ndarray:
    """Ranks 1..n of the values, tied values sharing the mean of the ranks they span."""
    v = np.asarray(x, np.float64)
    order = np.argsort(v, kind="stable")
    ranked = v[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])  # first sorted index of each run
    ends = np.r_[starts[1:], len(v)]  # one past its last
    run = np.cumsum(np.r_[True, ranked[1:] != ranked[:-1]]) - 1  # each sorted value's run
    ranks = np.empty(len(v))
    ranks[order] = ((starts + 1 + ends) / 2)[run]  # the mean of ranks starts+1 .. ends
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    return pearson(average_ranks(x), average_ranks(y))


def classification_scores(predictions: Sequence[int], labels: Sequence[int], kind: str) -> dict[str, float]:
    """The scores METRICS[kind] names, of predicted and true class indexes."""
    fns = {"accuracy": accuracy, "f1": f1, "macro_f1": macro_f1, "matthews_correlation": matthews}
    return {name: fns[name](predictions, labels) for name in METRICS[kind]}


def regression_scores(predictions: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
    return {"pearson": pearson(predictions, labels), "spearman": spearman(predictions, labels)}
