"""`bertkit finetune classify` on own files (CSV with quoted fields, JSON Lines, TSV) made of real RTE
pairs, on the tiny fixture checkpoint: the label set and columns it keeps, its scores against
scikit-learn, `bertkit predict` and a --do_train=false evaluation reproducing them; regression
detected from float labels; and every bad input (of classify and of glue) one line naming the file,
line and column, exit code 2, with the output folder left as it was."""

import csv
import json

import pytest
from sklearn.metrics import accuracy_score, f1_score

from bertkit import BertkitError
from bertkit.checkpoint import load_task
from bertkit.cli import main as cli_main
from bertkit.tasks.finetune import classify
from conftest import DATA

RTE = DATA / "glue" / "RTE" / "train.tsv"
FAST = ["--train_batch_size", "8", "--eval_batch_size", "8", "--num_train_epochs", "1", "--learning_rate", "1e-3",
        "--device", "cpu"]


def rte_rows(start, n):
    rows = [r.rstrip("\n").split("\t") for r in RTE.read_text(encoding="utf-8").splitlines(keepends=True)[1:]]
    return [{"sentence1": r[1], "sentence2": r[2], "label": r[3]} for r in rows[start:start + n]]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("own")
    with open(d / "train.csv", "w", newline="", encoding="utf-8") as f:  # RTE's commas and quotes get quoted
        w = csv.DictWriter(f, ["sentence1", "sentence2", "label"])
        w.writeheader()
        w.writerows(rte_rows(0, 48))
    (d / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rte_rows(1000, 24)), encoding="utf-8")
    (d / "test.tsv").write_text("sentence1\tsentence2\n" + "".join(f"{r['sentence1']}\t{r['sentence2']}\n"
                                                                  for r in rte_rows(2000, 16)), encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def run(files, tmp_path_factory, fixture_model):
    out = tmp_path_factory.mktemp("classify_out")
    assert cli_main(["finetune", "classify", "--train_file", str(files / "train.csv"), "--validation_file",
                     str(files / "dev.jsonl"), "--test_file", str(files / "test.tsv"), "--init_checkpoint",
                     str(fixture_model), "--output_dir", str(out), *FAST]) == 0
    return out


def test_classify_keeps_its_labels_and_columns(run):
    record = load_task(run / "ckpt-00000006")
    assert (record.task, record.problem, record.labels) == ("classify", "classification", ("entailment", "not_entailment"))
    assert (record.text_column, record.text_pair_column, record.label_column) == ("sentence1", "sentence2", "label")


def test_classify_scores_and_predict_reproduces_them(run, files, tmp_path):
    results = json.loads((run / "eval_results.json").read_text())
    rows = [r.split("\t") for r in (run / "eval_predictions.tsv").read_text().splitlines()[1:]]
    gold, pred = [r[1] for r in rows], [r[2] for r in rows]
    assert gold == [r["label"] for r in rte_rows(1000, 24)]
    assert results["accuracy"] == accuracy_score(gold, pred)
    assert results["macro_f1"] == pytest.approx(f1_score(gold, pred, average="macro", zero_division=0), abs=1e-12)
    assert cli_main(["predict", "-m", str(run), "-i", str(files / "dev.jsonl"), "-o", str(tmp_path / "p.jsonl"),
                     "--batch_size", "8"]) == 0
    predicted = [json.loads(x)["label"] for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert accuracy_score(gold, predicted) == results["accuracy"]
    assert f1_score(gold, predicted, average="macro") == pytest.approx(results["macro_f1"], abs=1e-12)
    # the test file: predict's objects beside Google's probabilities
    objects = [json.loads(x) for x in (run / "test_predictions.jsonl").read_text().splitlines()]
    probs = [[float(p) for p in line.split("\t")] for line in (run / "test_results.tsv").read_text().splitlines()]
    assert len(objects) == len(probs) == 16
    assert [[o["probabilities"][k] for k in ("entailment", "not_entailment")] for o in objects] == probs


def test_evaluating_the_fine_tuned_model_needs_no_training_flags(run, files, tmp_path):
    assert cli_main(["finetune", "classify", "--do_train=false", "--init_checkpoint", str(run), "--validation_file",
                     str(files / "dev.jsonl"), "--output_dir", str(tmp_path / "e"), "--device", "cpu",
                     "--eval_batch_size", "8"]) == 0
    assert json.loads((tmp_path / "e" / "eval_results.json").read_text()) == json.loads(
        (run / "eval_results.json").read_text())


def job(tmp_path, records, *flags):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    args = classify.parser().parse_args(["--train_file", str(path), "--output_dir", str(tmp_path / "o"),
                                         "--bert_config_file", "tiny", *flags])
    return classify.read_job(args, 64, False, False)


def test_label_order_is_sorted_not_first_seen(tmp_path):
    j = job(tmp_path, [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}, {"text": "c", "label": "mid"}])
    assert j.record.labels == ("mid", "neg", "pos") and j.record.text_pair_column is None


def test_regression_from_labels_or_flag(tmp_path):
    assert job(tmp_path, [{"text": "a", "label": 3.8}, {"text": "b", "label": "1"}]).record.problem == "regression"
    stars = job(tmp_path, [{"text": "a", "label": 5}, {"text": "b", "label": 1}])
    assert (stars.record.problem, stars.record.labels) == ("classification", ("1", "5"))
    forced = job(tmp_path, [{"text": "a", "label": 5}, {"text": "b", "label": 1}], "--task", "regression")
    assert forced.record.problem == "regression" and [ex.label for ex in forced.train] == [5.0, 1.0]
    with pytest.raises(BertkitError, match=r"t.jsonl:2: label 'x' is not a finite number"):
        job(tmp_path, [{"text": "a", "label": 5}, {"text": "b", "label": "x"}], "--task", "regression")


# ---- bad input: one line naming file, line and column; exit 2; the output folder as it was ------

def edit(path, fn):
    path.write_bytes(fn(path.read_bytes()))


def line_edit(data, n, fn):
    """`data` with its line n (0-based) changed by `fn`."""
    lines = data.split(b"\n")
    lines[n] = fn(lines[n])
    return b"\n".join(lines)


CLASSIFY_CASES = {
    "missing column": (lambda d: None, ["--text_column", "review"],
                       "train.csv:1: no column 'review' (columns: sentence1, sentence2, label)"),
    "unseen validation label": (
        lambda d: edit(d / "dev.jsonl", lambda b: b.replace(b'"label": "entailment"', b'"label": "maybe"', 1)), [],
        "dev.jsonl:4: column 'label': label 'maybe' is not among the training labels (entailment, not_entailment)"),
    "empty file": (lambda d: (d / "train.csv").write_bytes(b""), [], "train.csv: empty file"),
    "header only": (lambda d: edit(d / "train.csv", lambda b: b.split(b"\n")[0] + b"\n"), [],
                    "train.csv: no examples (only a header row)"),
    "wrong number of fields": (
        lambda d: edit(d / "test.tsv", lambda b: line_edit(b, 2, lambda x: x + b"\textra")), [],
        "test.tsv:3: 3 fields, but the header has 2 (sentence1, sentence2)"),
    "not UTF-8": (lambda d: edit(d / "train.csv", lambda b: b.replace(b"Iraq", b"Ira\xff", 1)), [],
                  "train.csv:2: column 'sentence1': not valid UTF-8 (byte 0xff)"),
    "no label in JSON Lines": (
        lambda d: edit(d / "dev.jsonl", lambda b: b.replace(b', "label": "', b', "gold": "', 1)), [],
        "dev.jsonl:1: no key 'label' (keys: sentence1, sentence2, gold)"),
}


@pytest.fixture(params=["absent", "existing"])
def output(request, tmp_path):
    """The output folder: absent, or holding an earlier run's file; it must stay so."""
    out = tmp_path / "out"
    if request.param == "existing":
        out.mkdir()
        (out / "eval_results.json").write_text('{"accuracy": 0.5}\n')
    return out


def snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else None


def refused(capsys, output, argv, message):
    before = snapshot(output)
    code = cli_main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert snapshot(output) == before


@pytest.mark.parametrize("case", CLASSIFY_CASES)
def test_bad_own_files(case, files, tmp_path, fixture_model, output, capsys):
    mutate, flags, message = CLASSIFY_CASES[case]
    d = tmp_path / "data"
    d.mkdir()
    for f in files.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    mutate(d)
    refused(capsys, output, ["finetune", "classify", "--train_file", str(d / "train.csv"), "--validation_file",
                             str(d / "dev.jsonl"), "--test_file", str(d / "test.tsv"), "--init_checkpoint",
                             str(fixture_model), "--output_dir", str(output), *flags, *FAST], message)


GLUE_CASES = {
    "unknown label": ("RTE", "dev.tsv", lambda b: b.replace(b"\tentailment\n", b"\tmaybe\n", 1),
                      "column 'label': label 'maybe' is not among RTE's labels (entailment, not_entailment)"),
    "wrong number of fields": ("CoLA", "dev.tsv", lambda b: b.replace(b"\t", b" ", 1),
                               "dev.tsv:1: 3 fields, but the layout has 4 (source, label, original_label, sentence)"),
    "not UTF-8": ("STS-B", "train.tsv", lambda b: b.replace(b"A plane", b"A pl\xffne", 1),
                  "train.tsv:2: column 'sentence1': not valid UTF-8 (byte 0xff)"),
    "score not a number": ("STS-B", "dev.tsv", lambda b: line_edit(b, 1, lambda x: x + b"x"),
                           "dev.tsv:2: column 'score': '"),
    "missing column": ("RTE", "train.tsv", lambda b: b.replace(b"sentence2", b"hypothesis", 1),
                       "train.tsv:1: no column 'sentence2' (columns: index, sentence1, hypothesis, label)"),
    "missing file": ("RTE", "dev.tsv", None, "dev.tsv: no such file (GLUE's RTE folder holds train.tsv, dev.tsv, test.tsv)"),
    "empty file": ("SST-2", "train.tsv", lambda b: b"\n", "train.tsv: empty file"),
}


@pytest.mark.parametrize("case", GLUE_CASES)
def test_bad_glue_files(case, tmp_path, fixture_model, output, capsys):
    task, name, mutate, message = GLUE_CASES[case]
    src = DATA / "glue" / task / "train.tsv"
    d = tmp_path / task
    d.mkdir()
    rows = src.read_bytes().split(b"\n")
    head = [] if task == "CoLA" else rows[:1]
    (d / "train.tsv").write_bytes(b"\n".join(head + rows[1:20]) + b"\n")
    (d / "dev.tsv").write_bytes(b"\n".join(head + rows[30:40]) + b"\n")
    if mutate is None:
        (d / name).unlink()
    else:
        (d / name).write_bytes(mutate((d / name).read_bytes()))
    refused(capsys, output, ["finetune", "glue", "--task_name", task, "--data_dir", str(d), "--init_checkpoint",
                             str(fixture_model), "--output_dir", str(output), "--do_eval", *FAST], message)
