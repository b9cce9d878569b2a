"""bertkit's classification and regression scores against scikit-learn and SciPy on crafted
predictions, degenerate ones included (a constant prediction, all wrong, ties everywhere)."""

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from bertkit.tasks.finetune import metrics

rng = np.random.default_rng(7)
LABELS = rng.integers(0, 2, 200)
CASES = {
    "random": rng.integers(0, 2, 200),
    "mostly right": np.where(rng.random(200) < 0.85, LABELS, 1 - LABELS),
    "constant 1": np.ones(200, np.int64),
    "constant 0": np.zeros(200, np.int64),
    "all wrong": 1 - LABELS,
    "all right": LABELS.copy(),
}


@pytest.mark.parametrize("case", CASES)
def test_binary_scores_equal_scikit_learn(case):
    p = CASES[case]
    assert metrics.accuracy(p, LABELS) == pytest.approx(accuracy_score(LABELS, p), abs=1e-12)
    assert metrics.f1(p, LABELS) == pytest.approx(f1_score(LABELS, p, zero_division=0), abs=1e-12)
    assert metrics.matthews(p, LABELS) == pytest.approx(matthews_corrcoef(LABELS, p), abs=1e-12)
    assert metrics.macro_f1(p, LABELS) == pytest.approx(f1_score(LABELS, p, average="macro", zero_division=0),
                                                        abs=1e-12)


def test_constant_prediction_has_zero_matthews_correlation():
    assert metrics.matthews(CASES["constant 1"], LABELS) == 0.0 == matthews_corrcoef(LABELS, CASES["constant 1"])
    assert metrics.matthews(CASES["all wrong"], LABELS) == pytest.approx(-1.0)


def test_f1_without_the_positive_class():
    assert metrics.f1([0, 0, 0], [0, 0, 0]) == 0.0 == f1_score([0, 0, 0], [0, 0, 0], zero_division=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multiclass_scores_equal_scikit_learn(seed):
    r = np.random.default_rng(seed)
    y = r.integers(0, 4, 150)
    p = np.where(r.random(150) < 0.6, y, r.integers(0, 3, 150))  # class 3 is never predicted
    assert metrics.matthews(p, y) == pytest.approx(matthews_corrcoef(y, p), abs=1e-12)
    assert metrics.macro_f1(p, y) == pytest.approx(f1_score(y, p, average="macro", zero_division=0), abs=1e-12)
    assert metrics.accuracy(p, y) == pytest.approx(accuracy_score(y, p), abs=1e-12)


SCORES = np.round(rng.uniform(0, 5, 300) * 5) / 5  # STS-B-like gold scores: steps of 0.2, many ties
REGRESSION = {
    "noisy": SCORES + rng.normal(0, 1, 300),
    "rounded (ties on both sides)": np.round(SCORES + rng.normal(0, 0.7, 300)),
    "few values": rng.integers(0, 3, 300).astype(float),
    "reversed": 5 - SCORES,
}


@pytest.mark.parametrize("case", REGRESSION)
def test_correlations_equal_scipy(case):
    p = REGRESSION[case]
    assert metrics.pearson(p, SCORES) == pytest.approx(pearsonr(p, SCORES)[0], abs=1e-12)
    assert metrics.spearman(p, SCORES) == pytest.approx(spearmanr(p, SCORES)[0], abs=1e-12)


def test_average_ranks_of_ties():
    assert metrics.average_ranks([3.0, 1.0, 3.0, 2.0, 3.0]).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]


def test_constant_prediction_correlates_zero_where_scipy_says_nan():
    flat = np.full(300, 2.5)
    with pytest.warns(Warning):
        assert np.isnan(pearsonr(flat, SCORES)[0])
    assert metrics.pearson(flat, SCORES) == 0.0 and metrics.spearman(flat, SCORES) == 0.0


def test_classification_scores_name_what_glue_reports():
    p, y = CASES["mostly right"], LABELS
    assert metrics.classification_scores(p, y, "matthews") == {
        "matthews_correlation": pytest.approx(matthews_corrcoef(y, p)), "accuracy": pytest.approx(accuracy_score(y, p))}
    assert set(metrics.classification_scores(p, y, "accuracy_f1")) == {"f1", "accuracy"}


def test_bertkit_itself_never_imports_the_reference_libraries():
    """scikit-learn and SciPy are the tests' references only (pyproject's test extra)."""
    import ast

    from conftest import REPO

    for path in (REPO / "src" / "bertkit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] in ("sklearn", "scipy") for n in names), path
