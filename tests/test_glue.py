"""`bertkit finetune glue` end to end on the tiny fixture checkpoint (2 layers, hidden 128) and
small slices of the real RTE, STS-B and CoLA training files (MNLI in its written layout): each
task's scores equal scikit-learn's and SciPy's on the written predictions; GLUE's submission files
and Google's test_results.tsv; `bertkit predict` on the fine-tuned model reproduces the evaluation;
the Hugging Face export gives the same logits (1e-5); a resumed run ends where an undisturbed one
does; --dllog_path and `bertkit plot` on the run's log."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, matthews_corrcoef

from bertkit.checkpoint import load_model_folder, load_task
from bertkit.cli import main as cli_main
from bertkit.model import BertForSequenceClassification
from bertkit.tasks.finetune import glue_data
from bertkit.tasks.finetune.classification import collate, make_features
from bertkit.tokenizer import WordPiece
from conftest import DATA

GLUE = DATA / "glue"
FAST = ["--train_batch_size", "8", "--eval_batch_size", "8", "--num_train_epochs", "1", "--learning_rate", "1e-3",
        "--device", "cpu", "--log_every", "2"]


def lines(path):
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def slice_task(src, dst, train, dev, test_columns, header=True):
    """train.tsv, dev.tsv and test.tsv (unlabelled: the first `test_columns` columns) from slices of a
    real GLUE training file, in its own layout."""
    rows = lines(src)
    head, body = (rows[:1], rows[1:]) if header else ([], rows)
    dst.mkdir(parents=True)
    (dst / "train.tsv").write_text("".join(head + body[:train]), encoding="utf-8")
    (dst / "dev.tsv").write_text("".join(head + body[1000:1000 + dev]), encoding="utf-8")
    cut = lambda r: "\t".join(r.rstrip("\n").split("\t")[:test_columns]) + "\n"  # noqa: E731
    test_head = [cut(head[0])] if header else ["index\tsentence\n"]
    test_body = [cut(r) for r in body[2000:2016]] if header else [f"{i}\t{r.split(chr(9))[3]}" for i, r in
                                                                  enumerate(body[2000:2016])]
    (dst / "test.tsv").write_text("".join(test_head + test_body), encoding="utf-8")
    return dst


def finetune(*argv):
    assert cli_main(["finetune", "glue", *map(str, argv)]) == 0


def read_eval_predictions(path):
    rows = [r.rstrip("\n").split("\t") for r in lines(path)]
    return rows[0], rows[1:]


@pytest.fixture(scope="module")
def rte(tmp_path_factory, fixture_model):
    d = slice_task(GLUE / "RTE" / "train.tsv", tmp_path_factory.mktemp("glue") / "RTE", 48, 32, 3)
    out = tmp_path_factory.mktemp("rte_out")
    argv = ["--task_name", "RTE", "--data_dir", d.parent, "--init_checkpoint", fixture_model, "--output_dir", out,
            "--do_eval", "--do_predict", "--save_checkpoints_steps", "3", "--keep_checkpoints", "0",
            "--dllog_path", out / "dllog.json", *FAST]
    finetune(*argv)
    return d, out, argv


def test_rte_scores_and_files(rte):
    d, out, _ = rte
    results = json.loads((out / "eval_results.json").read_text())
    head, rows = read_eval_predictions(out / "eval_predictions.tsv")
    assert head == ["index", "label", "prediction", "entailment", "not_entailment"]
    gold, pred = [r[1] for r in rows], [r[2] for r in rows]
    assert gold == [ex.label for ex in glue_data.read_split(glue_data.TASKS["rte"], d / "dev.tsv", "dev")]
    assert results["accuracy"] == accuracy_score(gold, pred) and results["examples"] == 32
    probs = np.array([[float(x) for x in r[3:]] for r in rows])
    index = [head[3:].index(g) for g in gold]
    assert results["loss"] == pytest.approx(-np.mean(np.log(probs[np.arange(32), index])), abs=1e-9)
    # Google's eval_results.txt
    txt = dict(line.split(" = ") for line in (out / "eval_results.txt").read_text().splitlines())
    assert list(txt) == ["eval_accuracy", "eval_loss", "global_step", "loss"]
    assert float(txt["eval_accuracy"]) == results["accuracy"] and txt["global_step"] == "6"
    # GLUE's submission file and Google's test_results.tsv agree, in test.tsv's order
    sub = [r.rstrip("\n").split("\t") for r in lines(out / "RTE.tsv")]
    assert sub[0] == ["index", "prediction"]
    assert [r[0] for r in sub[1:]] == [r.split("\t")[0] for r in lines(d / "test.tsv")[1:]]
    probs = np.array([[float(x) for x in r.split("\t")] for r in lines(out / "test_results.tsv")])
    assert probs.shape == (16, 2) and np.allclose(probs.sum(1), 1)
    assert [r[1] for r in sub[1:]] == [("entailment", "not_entailment")[i] for i in probs.argmax(1)]
    # the checkpoint carries its task; the seed's dllogger stream and `bertkit plot` read the run
    assert load_task(out / "ckpt-00000006").labels == ("entailment", "not_entailment")
    assert sum(line.startswith("DLLL ") for line in (out / "dllog.json").read_text().splitlines()) >= 4
    assert cli_main(["plot", str(out / "log.jsonl"), "-o", str(out / "curve.png")]) == 0
    assert (out / "curve.png").stat().st_size > 1000


def test_predict_reproduces_the_evaluation(rte, tmp_path):
    d, out, _ = rte
    assert cli_main(["predict", "--model", str(out), "--input", str(d / "dev.tsv"), "--output",
                     str(tmp_path / "p.jsonl"), "--batch_size", "8"]) == 0
    predicted = [json.loads(x) for x in lines(tmp_path / "p.jsonl")]
    head, rows = read_eval_predictions(out / "eval_predictions.tsv")
    gold = [r[1] for r in rows]
    assert [p["line"] for p in predicted] == list(range(2, 34))
    assert accuracy_score(gold, [p["label"] for p in predicted]) == json.loads(
        (out / "eval_results.json").read_text())["accuracy"]
    assert [[p["probabilities"][k] for k in head[3:]] for p in predicted] == [[float(x) for x in r[3:]] for r in rows]


def our_logits(folder, examples, max_seq_length=128):
    config, state, vocab, meta = load_model_folder(folder)
    record = load_task(folder)
    model = BertForSequenceClassification(config, num_labels=record.num_outputs).eval()
    model.load_state_dict(state, strict=False)
    tok = WordPiece(vocab, lowercase=meta["do_lower_case"])
    batch = collate(make_features(examples, tok, max_seq_length, record.labels))
    with torch.no_grad():
        return model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]), batch


def hf_logits(folder, tmp_path, examples, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import transformers

    assert cli_main(["convert", "--input", str(folder), "--output", str(tmp_path / "hf"), "--format", "hf"]) == 0
    model = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    enc = tok([e.text_a for e in examples], [e.text_b for e in examples], truncation="longest_first",
              max_length=128, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits, enc, model.config


def test_hf_export_gives_the_same_logits(rte, tmp_path, monkeypatch):
    d, out, _ = rte
    dev = glue_data.read_split(glue_data.TASKS["rte"], d / "dev.tsv", "dev")
    ours, batch = our_logits(out / "ckpt-00000006", dev)
    theirs, enc, config = hf_logits(out / "ckpt-00000006", tmp_path, dev, monkeypatch)
    assert torch.equal(enc["input_ids"], batch["input_ids"])  # the same WordPiece ids
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert config.id2label == {0: "entailment", 1: "not_entailment"}
    assert config.problem_type == "single_label_classification"


def test_resumed_run_ends_where_the_undisturbed_one_does(rte, tmp_path, capsys):
    """The run saved steps 3 and 6; without step 6 and its results, the same command resumes at 3
    and ends with the same weights, bit for bit (CPU)."""
    _, out, argv = rte
    again = tmp_path / "out"
    shutil.copytree(out, again, ignore=shutil.ignore_patterns("ckpt-00000006", "*.tsv", "*results*", "dllog.json"))
    finetune(*[again if a == out else again / "dllog.json" if a == out / "dllog.json" else a for a in argv])
    assert "resumed from" in capsys.readouterr().err
    first, second = (load_file(o / "ckpt-00000006" / "model.safetensors") for o in (out, again))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert (again / "eval_results.json").read_text() == (out / "eval_results.json").read_text()


@pytest.fixture(scope="module")
def stsb(tmp_path_factory, fixture_model):
    d = slice_task(GLUE / "STS-B" / "train.tsv", tmp_path_factory.mktemp("glue") / "STS-B", 48, 32, 9)
    out = tmp_path_factory.mktemp("stsb_out")
    finetune("--task_name", "STS-B", "--data_dir", d, "--init_checkpoint", fixture_model, "--output_dir", out,
             "--do_eval", "--do_predict", *FAST)
    return d, out


def test_stsb_regression(stsb, tmp_path, monkeypatch):
    d, out = stsb
    results = json.loads((out / "eval_results.json").read_text())
    head, rows = read_eval_predictions(out / "eval_predictions.tsv")
    assert head == ["index", "label", "prediction"]
    gold, pred = np.array([[float(r[1]), float(r[2])] for r in rows]).T
    assert results["pearson"] == pytest.approx(pearsonr(pred, gold)[0], abs=1e-9)
    assert results["spearman"] == pytest.approx(spearmanr(pred, gold)[0], abs=1e-9)
    assert results["loss"] == pytest.approx(np.mean((pred - gold) ** 2), abs=1e-9)
    sub = [r.rstrip("\n").split("\t") for r in lines(out / "STS-B.tsv")]
    assert sub[0] == ["index", "prediction"] and len(sub) == 17
    assert [float(r[1]) for r in sub[1:]] == [float(x) for x in lines(out / "test_results.tsv")]
    record = load_task(out / "ckpt-00000006")
    assert (record.problem, record.labels, record.num_outputs) == ("regression", None, 1)
    # predict's values score as the evaluation did; the HF export is a regression model of one output
    assert cli_main(["predict", "-m", str(out), "-i", str(d / "dev.tsv"), "-o", str(tmp_path / "p.jsonl"),
                     "--batch_size", "8"]) == 0
    values = [json.loads(x)["value"] for x in lines(tmp_path / "p.jsonl")]
    assert pearsonr(values, gold)[0] == pytest.approx(results["pearson"], abs=1e-12)
    dev = glue_data.read_split(glue_data.TASKS["stsb"], d / "dev.tsv", "dev")
    ours, _ = our_logits(out / "ckpt-00000006", dev)
    theirs, _, config = hf_logits(out / "ckpt-00000006", tmp_path, dev, monkeypatch)
    assert config.problem_type == "regression" and config.num_labels == 1
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_cola_without_header_scores_matthews(tmp_path, fixture_model):
    d = slice_task(GLUE / "CoLA" / "train.tsv", tmp_path / "CoLA", 48, 32, 2, header=False)
    finetune("--task_name", "CoLA", "--data_dir", d, "--init_checkpoint", fixture_model, "--output_dir",
             tmp_path / "out", "--do_eval", "--do_predict", *FAST)
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    _, rows = read_eval_predictions(tmp_path / "out" / "eval_predictions.tsv")
    gold = [r.split("\t")[1] for r in lines(d / "dev.tsv")]  # CoLA: the label is column 1
    assert [r[1] for r in rows] == gold
    assert results["matthews_correlation"] == pytest.approx(matthews_corrcoef(gold, [r[2] for r in rows]), abs=1e-12)
    sub = lines(tmp_path / "out" / "CoLA.tsv")
    assert sub[0] == "index\tprediction\n" and [r.split("\t")[0] for r in sub[1:]] == [str(i) for i in range(16)]


def test_mnli_scores_both_dev_sets(tmp_path, fixture_model):
    from test_glue_data import MNLI_DEV, MNLI_TEST, MNLI_TRAIN, NLI, mnli_row, write

    d = tmp_path / "MNLI"
    write(d / "train.tsv", MNLI_TRAIN, [mnli_row(i, [NLI[i % 3]] * 2) for i in range(16)])
    for name, n in (("dev_matched", 6), ("dev_mismatched", 5)):
        write(d / f"{name}.tsv", MNLI_DEV, [mnli_row(i, [NLI[i % 3]] * 6) for i in range(n)])
    for name, n in (("test_matched", 4), ("test_mismatched", 3)):
        write(d / f"{name}.tsv", MNLI_TEST, [mnli_row(100 + i, []) for i in range(n)])
    out = tmp_path / "out"
    finetune("--task_name", "MNLI", "--data_dir", tmp_path, "--init_checkpoint", fixture_model, "--output_dir", out,
             "--do_eval", "--do_predict", *FAST)
    results = json.loads((out / "eval_results.json").read_text())
    assert (results["examples"], results["examples_mm"]) == (6, 5)
    for suffix in ("", "_mm"):
        _, rows = read_eval_predictions(out / f"eval_predictions{suffix}.tsv")
        assert results[f"accuracy{suffix}"] == accuracy_score([r[1] for r in rows], [r[2] for r in rows])
    txt = [line.split(" = ")[0] for line in (out / "eval_results.txt").read_text().splitlines()]
    assert txt == ["eval_accuracy", "eval_accuracy_mm", "eval_loss", "eval_loss_mm", "global_step", "loss"]
    for name, n in (("MNLI-m", 4), ("MNLI-mm", 3)):
        sub = lines(out / f"{name}.tsv")
        assert len(sub) == n + 1 and {r.rstrip("\n").split("\t")[1] for r in sub[1:]} <= set(NLI)
    assert len(lines(out / "test_results_mm.tsv")) == 3
