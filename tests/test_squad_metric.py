"""`bertkit squad-eval` against the official SQuAD definitions. Every expected number below is
worked out by hand from the definition (normalise: lower case, drop string.punctuation, drop the
words a/an/the, collapse spaces; F1 from shared word counts), not by calling our code."""

import json
import re

import pytest

from bertkit.cli import main as cli
from bertkit.tasks.finetune import squad_metric as m


def squad_json(questions):
    """questions: (id, gold answers or None for unanswerable)."""
    qas = []
    for qid, golds in questions:
        q = {"id": qid, "question": "?", "answers": [{"text": g, "answer_start": 0} for g in golds or []]}
        if golds is None:
            q["is_impossible"] = True
        qas.append(q)
    return {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": "c", "qas": qas}]}]}


@pytest.mark.parametrize("text, expected", [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  an  apple,  a pear and THE plum. ", "apple pear and plum"),
    ("theater anthem athens", "theater anthem athens"),  # articles only as whole words
    ("Saint-Denis (1,000)", "saintdenis 1000"),           # punctuation removed, not replaced
    ("\u201cquoted\u201d", "\u201cquoted\u201d"),         # curly quotes are not in string.punctuation
    ("a the an", ""),
])
def test_normalize(text, expected):
    assert m.normalize_answer(text) == expected


# (id, gold answers, prediction, exact match, F1), each F1 from stated counts:
V1 = [
    ("exact", ["Denver Broncos"], "Denver Broncos", 1, 1.0),
    ("punct", ["The Eiffel Tower!"], "eiffel tower", 1, 1.0),
    # gold "university of chicago" (3 words), prediction "chicago university" (2): 2 shared,
    # precision 2/2, recall 2/3
    ("partial", ["the University of Chicago"], "Chicago University", 0, 2 * 1 * (2 / 3) / (1 + 2 / 3)),
    # golds "1000 dollars", "thousand dollars", "1000"; prediction "one thousand dollars":
    # 1 shared (P 1/3, R 1/2), 2 shared (P 2/3, R 2/2), 0 shared: the best is the second
    ("several", ["1,000 dollars", "a thousand dollars", "$1000"], "one thousand dollars", 0,
     2 * (2 / 3) * 1 / (2 / 3 + 1)),
    # gold "new york new york", prediction "new york": counts overlap new:1 york:1 = 2;
    # precision 2/2, recall 2/4
    ("repeat", ["New York New York"], "New York", 0, 2 * 1 * 0.5 / 1.5),
    ("article-word", ["Anthem"], "an them", 0, 0.0),  # "an them" -> "them"
    ("the-prefix", ["theater"], "The theater", 1, 1.0),
    ("curly", ["\u201cquoted\u201d"], "quoted", 0, 0.0),
    ("missing", ["anything"], None, 0, 0.0),
    ("joined", ["Saint-Denis"], "SaintDenis", 1, 1.0),
]


def test_v1_scores_by_hand():
    data = squad_json([(qid, golds) for qid, golds, *_ in V1])
    preds = {qid: p for qid, _, p, *_ in V1 if p is not None}
    got = m.evaluate(data, preds)
    em = 100.0 * (1 + 1 + 0 + 0 + 0 + 0 + 1 + 0 + 0 + 1) / 10
    f1 = 100.0 * (1 + 1 + 0.8 + 0.8 + 2 / 3 + 0 + 1 + 0 + 0 + 1) / 10
    assert got["exact_match"] == pytest.approx(em, abs=1e-9) == 40.0
    assert got["f1"] == pytest.approx(f1, abs=1e-9)
    assert got["total"] == 10 and got["missing"] == 1
    assert "HasAns_f1" not in got
    for qid, golds, pred, em_one, f1_one in V1:
        if pred is not None:
            assert max(m.exact_match_score(pred, g) for g in golds) == em_one, qid
            assert max(m.f1_score(pred, g) for g in golds) == pytest.approx(f1_one, abs=1e-12), qid


def test_v1_gold_of_only_articles_scores_f1_zero():
    # v1.1: "the" vs "the" normalise to "" and "": exact match 1, but no shared word, so F1 0.
    assert m.exact_match_score("the", "The") == 1.0 and m.f1_score("the", "The") == 0.0


V2 = [
    ("n1", None, ""),                 # unanswerable, answered "": 1 / 1
    ("n2", None, "something"),        # unanswerable, answered: 0 / 0
    ("h1", ["Paris"], ""),            # answerable, answered "": 0 / 0
    # gold "The" normalises to nothing and is dropped; "paris france" vs "paris": P 1, R 1/2
    ("h2", ["The", "Paris France"], "Paris"),
    ("h3", ["Paris"], "paris."),      # 1 / 1
]


def test_v2_scores_by_hand():
    data = squad_json([(qid, golds) for qid, golds, _ in V2])
    preds = {qid: p for qid, _, p in V2}
    got = m.evaluate(data, preds)
    f1_h2 = 2 * 1 * 0.5 / 1.5
    assert got["exact"] == pytest.approx(100.0 * 2 / 5, abs=1e-9)
    assert got["f1"] == pytest.approx(100.0 * (1 + f1_h2 + 1) / 5, abs=1e-9)
    assert got["HasAns_exact"] == pytest.approx(100.0 * 1 / 3, abs=1e-9)
    assert got["HasAns_f1"] == pytest.approx(100.0 * (f1_h2 + 1) / 3, abs=1e-9)
    assert got["NoAns_exact"] == pytest.approx(50.0, abs=1e-9) == got["NoAns_f1"]
    assert (got["HasAns_total"], got["NoAns_total"]) == (3, 2)


def test_v2_no_answer_threshold_and_best_threshold():
    data = squad_json([(qid, golds) for qid, golds, _ in V2])
    preds = {qid: p for qid, _, p in V2}
    na = {"n1": 0.1, "h1": 0.2, "h2": 0.3, "h3": 0.7, "n2": 0.8}
    got = m.evaluate(data, preds, na, na_prob_thresh=0.5)
    # Above 0.5: h3 (answerable) now counts as answered "" -> 0, n2 (unanswerable) -> 1.
    # Exact: n1 1, n2 1, h1 0, h2 0, h3 0. F1: the same but h2 keeps its 2/3.
    assert got["exact"] == pytest.approx(40.0, abs=1e-9)
    assert got["f1"] == pytest.approx(100.0 * (2 + 2 / 3) / 5, abs=1e-9)
    # Best threshold, as the official v2.0 script walks it: start with every unanswerable question
    # right (2), then admit questions by rising probability: n1 +0 (answered ""), h1 +0, h2 +0
    # (exact) or +2/3 (F1), h3 +1, n2 -1 (answered but unanswerable).
    # Exact: 2, 2, 2, 3 (at 0.7), 2 -> best 3 of 5 at 0.7.
    # F1: 2, 2, 2 2/3, 3 2/3 (at 0.7), 2 2/3 -> best 3 2/3 of 5 at 0.7.
    assert got["best_exact"] == pytest.approx(60.0, abs=1e-9)
    assert got["best_exact_thresh"] == 0.7
    assert got["best_f1"] == pytest.approx(100.0 * (3 + 2 / 3) / 5, abs=1e-9)
    assert got["best_f1_thresh"] == 0.7


def test_cli_prints_scores_and_warns_about_missing(tmp_path, capsys):
    data, preds = tmp_path / "data.json", tmp_path / "predictions.json"
    data.write_text(json.dumps(squad_json([(qid, golds) for qid, golds, *_ in V1])))
    preds.write_text(json.dumps({qid: p for qid, _, p, *_ in V1 if p is not None}))
    out = tmp_path / "scores.json"
    assert cli(["squad-eval", str(data), str(preds), "--out-file", str(out)]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert list(printed) == ["exact_match", "f1"]  # what the official v1.1 script prints
    assert printed["exact_match"] == pytest.approx(40.0, abs=1e-9)
    assert printed["f1"] == pytest.approx(100.0 * (4 + 0.8 + 0.8 + 2 / 3) / 10, abs=1e-9)
    assert "1 of 10 questions have no prediction" in captured.err
    assert json.loads(out.read_text()) == printed


def test_cli_v2_with_null_odds(tmp_path, capsys):
    data, preds, odds = tmp_path / "d.json", tmp_path / "p.json", tmp_path / "null_odds.json"
    data.write_text(json.dumps(squad_json([(qid, golds) for qid, golds, _ in V2])))
    preds.write_text(json.dumps({qid: p for qid, _, p in V2}))
    odds.write_text(json.dumps({"n1": 0.1, "h1": 0.2, "h2": 0.3, "h3": 0.7, "n2": 0.8}))
    assert cli(["squad-eval", str(data), str(preds), "--na-prob-file", str(odds),
                "--na-prob-thresh", "0.5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    # the official v2.0 script's names, in its order
    assert list(printed) == ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total", "NoAns_exact",
                             "NoAns_f1", "NoAns_total", "best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"]
    assert printed["exact"] == pytest.approx(40.0, abs=1e-9)
    assert printed["NoAns_exact"] == pytest.approx(100.0, abs=1e-9)
    # its short options -n, -t, -o
    assert cli(["squad-eval", str(data), str(preds), "-n", str(odds), "-t", "0.5", "-o", str(tmp_path / "o.json")]) == 0
    assert json.loads(capsys.readouterr().out) == printed == json.loads((tmp_path / "o.json").read_text())


@pytest.mark.parametrize("data_text, pred_text, message", [
    ('{"data": [', '{}', r"d\.json:1:11: malformed JSON"),
    ('{"data": []}', '["x"]', r"p\.json: expected a JSON object of question id -> answer text"),
    ('{"data": []}', '{"q": 3}', r"p\.json: prediction for question q is not text"),
    ('{"data": [{"title": "t"}]}', '{}', r"d\.json: malformed SQuAD structure"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, data_text, pred_text, message):
    (tmp_path / "d.json").write_text(data_text)
    (tmp_path / "p.json").write_text(pred_text)
    assert cli(["squad-eval", str(tmp_path / "d.json"), str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert re.search(message, err), err


def test_cli_missing_file(tmp_path, capsys):
    assert cli(["squad-eval", str(tmp_path / "none.json"), str(tmp_path / "p.json")]) == 2
    assert "none.json: no such file" in capsys.readouterr().err
