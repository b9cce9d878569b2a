"""`bertkit finetune mrpc|squad` end to end on a tiny Google checkpoint (the fixture, 2 layers,
hidden 128) and small slices of the real MRPC and SQuAD files: outputs and their scores against the
metric computed from the written predictions (and squad-eval), the fine-tuned classifier against
transformers, re-evaluation of the saved checkpoint, two processes against one, bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from bertkit.cli import main as cli_main
from bertkit.tasks.finetune import mrpc_data as mrpc
from bertkit.tasks.finetune import split_task
from bertkit.tasks.finetune.batching import length_grouped_order
from bertkit.tasks.finetune.runner import train_steps
from conftest import DATA, REPO

GLUE = DATA / "mrpc" / "glue"
SQUAD = DATA / "squad" / "dev-v1.1-even-articles.json"
FAST = ["--max_seq_length", "128", "--train_batch_size", "8", "--eval_batch_size", "8", "--num_train_epochs", "1",
        "--device", "cpu", "--log_every", "100"]


def bertkit(capsys, *argv):
    """Run the CLI in this process: (exit code, stdout, stderr)."""
    code = cli_main(["finetune", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def head(src, dst, rows):
    """The header and first `rows` data rows of an MRPC file."""
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    dst.write_text("".join(lines[: rows + 1]), encoding="utf-8")


@pytest.fixture(scope="module")
def mrpc_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mrpc")
    head(GLUE / "train.tsv", d / "train.tsv", 48)
    head(GLUE / "dev.tsv", d / "dev.tsv", 40)
    head(GLUE / "test.tsv", d / "test.tsv", 24)
    return d


@pytest.fixture(scope="module")
def mrpc_run(tmp_path_factory, mrpc_dir, fixture_model):
    out = tmp_path_factory.mktemp("mrpc_out")
    code = cli_main(["finetune", "mrpc", "--data_dir", str(mrpc_dir), "--init_checkpoint", str(fixture_model),
                     "--output_dir", str(out), "--do_eval", "--do_predict", "--learning_rate", "1e-3", "--eval_every", "3",
                     *FAST])
    assert code == 0
    return out


def read_eval_predictions(path):
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    return [int(r[1]) for r in rows], np.array([float(r[2]) for r in rows])


def test_mrpc_outputs_and_scores(mrpc_run, mrpc_dir):
    results = json.loads((mrpc_run / "eval_results.json").read_text())
    assert set(results) == {"accuracy", "f1", "precision", "recall", "loss", "examples"}
    dev = mrpc.read_mrpc(mrpc_dir / "dev.tsv")
    labels = [ex.label for ex in dev]
    preds, p1 = read_eval_predictions(mrpc_run / "eval_predictions.tsv")
    assert results["examples"] == len(preds) == 40
    # the scores are those of the written predictions: accuracy, and F1 of the paraphrase class
    assert results["accuracy"] == sum(p == y for p, y in zip(preds, labels)) / 40
    tp = sum(p == y == 1 for p, y in zip(preds, labels))
    assert results["f1"] == pytest.approx(2 * tp / (sum(preds) + sum(labels)), abs=1e-12)
    assert {k: results[k] for k in ("accuracy", "f1")} == {k: mrpc.metrics(preds, labels)[k] for k in ("accuracy", "f1")}
    nll = -np.mean([np.log(p if y == 1 else 1 - p) for p, y in zip(p1, labels)])
    assert results["loss"] == pytest.approx(nll, abs=1e-6)
    assert preds == [int(p > 0.5) for p in p1]
    # GLUE's submission format for the test split
    lines = (mrpc_run / "MRPC.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and [r.split("\t")[0] for r in lines[1:]] == [str(i) for i in range(24)]
    assert {r.split("\t")[1] for r in lines[1:]} <= {"0", "1"}
    # Google's step count, and the model saved at the end
    train = json.loads((mrpc_run / "train_results.json").read_text())
    assert train["steps"] == train_steps(48, 8, 1.0) == 6
    assert (mrpc_run / "ckpt-00000006" / "model.safetensors").is_file()
    # --eval_every 3: dev scores in the log at step 3 and at the end, the last equal to eval_results
    evals = [r for r in map(json.loads, (mrpc_run / "log.jsonl").read_text().splitlines()) if "eval_accuracy" in r]
    assert [r["step"] for r in evals] == [3, 6]
    assert evals[-1]["eval_accuracy"] == results["accuracy"] and evals[-1]["eval_f1"] == results["f1"]


def test_run_records_its_resolved_settings(mrpc_run):
    """run.json holds the settings the run actually took: the flags given, and the recipe's values
    for those left out (the fixture is a small model: the small-model recipe, but the learning rate
    given keeps one rate for every layer)."""
    settings = json.loads((mrpc_run / "run.json").read_text())["settings"]
    assert (settings["learning_rate"], settings["train_batch_size"], settings["max_seq_length"]) == (1e-3, 8, 128)
    assert (settings["num_train_epochs"], settings["layerwise_lr_decay"], settings["warmup_proportion"]) == (1.0, 1.0, 0.1)
    assert (settings["task"], settings["precision"], settings["device"], settings["unpad"]) == ("mrpc", "fp32", "cpu", True)
    assert settings["output_dir"] == str(mrpc_run) and settings["init_checkpoint"].endswith("model")


def test_fine_tuned_classifier_agrees_with_transformers(mrpc_run, mrpc_dir, tmp_path, monkeypatch):
    """The saved checkpoint, exported and run by transformers with its own tokenizer, gives the
    probabilities that eval_predictions.tsv holds."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import transformers

    assert cli_main(["convert", "--input", str(mrpc_run / "ckpt-00000006"), "--output", str(tmp_path / "hf"),
                     "--format", "hf"]) == 0
    model = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    dev = mrpc.read_mrpc(mrpc_dir / "dev.tsv")
    enc = tok([e.text_a for e in dev], [e.text_b for e in dev], truncation="longest_first", max_length=128,
              padding=True, return_tensors="pt")
    with torch.no_grad():
        p1 = model(**enc).logits.softmax(-1)[:, 1].numpy()
    preds, ours = read_eval_predictions(mrpc_run / "eval_predictions.tsv")
    np.testing.assert_allclose(ours, p1, atol=1e-5)
    assert preds == [int(p > 0.5) for p in p1]


def test_evaluating_the_saved_checkpoint_reproduces_the_results(mrpc_run, mrpc_dir, tmp_path, capsys):
    code, out, err = bertkit(capsys, "mrpc", "--data_dir", mrpc_dir, "--init_checkpoint", mrpc_run / "ckpt-00000006",
                             "--output_dir", tmp_path, "--do_train=false", "--do_eval", "--eval_batch_size", "16")
    assert code == 0, err
    assert "randomly initialised head" not in err
    assert json.loads((tmp_path / "eval_results.json").read_text()) == pytest.approx(
        json.loads((mrpc_run / "eval_results.json").read_text()), abs=1e-6)
    # the seed's spelling, with the output folder of the training run as the checkpoint
    code, out, err = bertkit(capsys, "--task_name=MRPC", "--data_dir", mrpc_dir, "--init_checkpoint", mrpc_run,
                             "--output_dir", tmp_path / "b", "--nodo_train", "--do_eval")
    assert code == 0, err
    assert json.loads(out)["accuracy"] == json.loads((mrpc_run / "eval_results.json").read_text())["accuracy"]


def test_two_processes_score_as_one(mrpc_dir, fixture_model, tmp_path):
    """A 2-process torchrun run (gloo, length-grouped batches) trains at the global batch and
    scores the dev split exactly as one process scores its checkpoint."""
    env_cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "bertkit", "finetune", "mrpc", "--data_dir", str(mrpc_dir),
               "--init_checkpoint", str(fixture_model), "--output_dir", str(tmp_path / "ddp"), "--do_eval",
               "--group_by_length", "--learning_rate", "1e-3", *FAST]
    one_thread = {**os.environ, "OMP_NUM_THREADS": "1"}  # bit-exact sums need the same thread count on both sides
    r = subprocess.run(env_cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=one_thread)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert json.loads((tmp_path / "ddp" / "train_results.json").read_text())["global_batch"] == 16
    assert (tmp_path / "ddp" / "ckpt-00000003").is_dir()  # int(48 / 16 * 1) steps
    r1 = subprocess.run([sys.executable, "-m", "bertkit", "finetune", "mrpc", "--data_dir", str(mrpc_dir),
                         "--init_checkpoint", str(tmp_path / "ddp"), "--output_dir", str(tmp_path / "one"),
                         "--do_train=false", "--do_eval", *FAST], capture_output=True, text=True, timeout=300,
                        env=one_thread)
    assert r1.returncode == 0, r1.stderr[-3000:]
    two = json.loads((tmp_path / "ddp" / "eval_results.json").read_text())
    one = json.loads((tmp_path / "one" / "eval_results.json").read_text())
    assert two == one  # bit for bit: each dev pair meets the same batch either way
    assert (tmp_path / "ddp" / "eval_predictions.tsv").read_text() == (tmp_path / "one" / "eval_predictions.tsv").read_text()


def test_length_grouped_order():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 120, 203)
    chunk, n = 16, len(lengths)
    stream = np.concatenate([length_grouped_order(lengths, chunk, seed=3, epoch=e) for e in range(4)])
    for e in range(4):
        assert sorted(stream[e * n:(e + 1) * n].tolist()) == list(range(n))  # each epoch is a permutation
    assert np.array_equal(stream[:n], length_grouped_order(lengths, chunk, seed=3, epoch=0))
    assert not np.array_equal(stream[:n], length_grouped_order(lengths, chunk, seed=4, epoch=0))
    # Steps' batches start at multiples of `chunk` from the first epoch on; those within one epoch
    # hold similar lengths (the groups are sorted), far less padding than a random order.
    inside = [k for k in range(0, len(stream) - chunk + 1, chunk) if k // n == (k + chunk - 1) // n]
    grouped = sum(lengths[stream[k:k + chunk]].max() * chunk for k in inside)
    shuffled = np.concatenate([rng.permutation(n) for _ in range(4)])
    random = sum(lengths[shuffled[k:k + chunk]].max() * chunk for k in inside)
    assert grouped < 0.75 * random
    spread = [np.ptp(lengths[stream[k:k + chunk]]) for k in inside]
    assert np.median(spread) < 15  # lengths span 10..119: a sorted group of 800 leaves ~2 per batch


# ---- SQuAD ---------------------------------------------------------------------------------------

def squad_slice(articles, paragraphs, questions=None):
    data = json.loads(SQUAD.read_text())
    out = []
    for a in articles:
        art = data["data"][a]
        paras = [dict(p, qas=p["qas"][:questions]) for p in art["paragraphs"][:paragraphs]]
        out.append({"title": art["title"], "paragraphs": paras})
    return {"version": "1.1", "data": out}


@pytest.fixture(scope="module")
def squad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("squad")
    train = squad_slice([0], 3, 4)
    long_question = "what " * 80 + "?"  # far over --max_query_length and --max_seq_length tokens
    train["data"][0]["paragraphs"][0]["qas"][0]["question"] = long_question
    bad = train["data"][0]["paragraphs"][1]["qas"][0]
    bad["answers"][0]["answer_start"] += 7  # the text is no longer there: a counted skip
    train["data"][0]["paragraphs"].append({"context": "", "qas": [
        {"id": "empty-context", "question": "what?", "answers": [{"text": "x", "answer_start": 0}]}]})
    predict = squad_slice([1], 2, 4)
    predict["data"][0]["paragraphs"].append({"context": "", "qas": [
        {"id": "empty-predict", "question": "what?", "answers": [{"text": "nothing", "answer_start": 0}]}]})
    (d / "train.json").write_text(json.dumps(train))
    (d / "predict.json").write_text(json.dumps(predict))
    return d, bad["id"]


@pytest.fixture(scope="module")
def squad_run(tmp_path_factory, squad_files, fixture_model):
    d, _ = squad_files
    out = tmp_path_factory.mktemp("squad_out")
    argv = ["finetune", "squad", "--train_file", str(d / "train.json"), "--predict_file", str(d / "predict.json"),
            "--do_predict", "--init_checkpoint", str(fixture_model), "--output_dir", str(out),
            "--max_seq_length", "96", "--doc_stride", "32", "--max_query_length", "24", "--train_batch_size", "8",
            "--eval_batch_size", "8", "--num_train_epochs", "1", "--learning_rate", "1e-3", "--device", "cpu"]
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli_main(argv)
    assert code == 0, err.getvalue()
    return out, err.getvalue()


def test_squad_outputs_equal_squad_eval(squad_run, squad_files, capsys):
    out, log = squad_run
    d, bad_id = squad_files
    predictions = json.loads((out / "predictions.json").read_text())
    nbest = json.loads((out / "nbest_predictions.json").read_text())
    predict = json.loads((d / "predict.json").read_text())
    contexts = {qa["id"]: p["context"] for a in predict["data"] for p in a["paragraphs"] for qa in p["qas"]}
    assert set(predictions) == set(nbest) == set(contexts)
    for qid, text in predictions.items():
        assert text in contexts[qid]  # an answer is a span of its own context
        assert nbest[qid][0]["text"] == text and sum(x["probability"] for x in nbest[qid]) == pytest.approx(1)
        assert len(nbest[qid]) <= 20
    assert predictions["empty-predict"] == ""
    assert not (out / "null_odds.json").exists()
    results = json.loads((out / "eval_results.json").read_text())
    assert cli_main(["squad-eval", str(d / "predict.json"), str(out / "predictions.json")]) == 0
    official = json.loads(capsys.readouterr().out)
    assert {k: results[k] for k in ("exact_match", "f1")} == official
    assert results["total"] == len(contexts)
    # bad training questions were skipped and counted, the long one cut, never a traceback
    train = json.loads((out / "train_results.json").read_text())
    assert train["skipped_training_questions"] == 2
    assert f"skipped 2 training question(s)" in log and bad_id in log
    assert "1 question(s) longer than --max_query_length 24 tokens were cut" in log
    assert "Traceback" not in log
    assert train["steps"] == train_steps(11, 8, 1.0) == 1  # counted in examples, as Google does


def test_squad_v2_predictions_with_null_odds(squad_run, tmp_path, capsys):
    """The trained span model answering a v2.0 file: null_odds.json for every question, the v2.0
    scores (HasAns/NoAns) equal to squad-eval's."""
    out, _ = squad_run
    data = squad_slice([2], 1, 3)
    data["version"] = "v2.0"
    qas = data["data"][0]["paragraphs"][0]["qas"]
    qas.append({"id": "no-answer", "question": "who is nobody?", "answers": [], "is_impossible": True})
    (tmp_path / "v2.json").write_text(json.dumps(data))
    code, stdout, err = bertkit(capsys, "squad", "--predict_file", tmp_path / "v2.json", "--do_predict",
                                "--do_train=false", "--init_checkpoint", out, "--output_dir", tmp_path / "o",
                                "--version_2_with_negative", "--max_seq_length", "96", "--doc_stride", "32",
                                "--max_query_length", "24", "--null_score_diff_threshold=-1e9")
    assert code == 0, err
    null_odds = json.loads((tmp_path / "o" / "null_odds.json").read_text())
    predictions = json.loads((tmp_path / "o" / "predictions.json").read_text())
    assert set(null_odds) == set(predictions) == {q["id"] for q in qas}
    assert all(predictions[q] == "" for q in predictions)  # threshold -1e9: the null answer always wins
    results = json.loads((tmp_path / "o" / "eval_results.json").read_text())
    assert results["NoAns_exact"] == 100.0 and results["HasAns_exact"] == 0.0
    assert cli_main(["squad-eval", str(tmp_path / "v2.json"), str(tmp_path / "o" / "predictions.json")]) == 0
    official = json.loads(capsys.readouterr().out)
    assert {k: results[k] for k in official} == official
    assert "best_f1" in results


# ---- bad input -----------------------------------------------------------------------------------

def test_mrpc_missing_column_names_file_and_line(mrpc_dir, fixture_model, tmp_path, capsys):
    d = tmp_path / "data"
    d.mkdir()
    head(mrpc_dir / "train.tsv", d / "train.tsv", 5)
    lines = (mrpc_dir / "dev.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    lines[2] = "\t".join(lines[2].split("\t")[:4]) + "\n"  # the second data row loses a column
    (d / "dev.tsv").write_text("".join(lines), encoding="utf-8")
    code, _, err = bertkit(capsys, "mrpc", "--data_dir", d, "--init_checkpoint", fixture_model,
                           "--output_dir", tmp_path / "out", "--do_eval")
    assert code == 2
    assert err.count("\n") == 1 and f"{d / 'dev.tsv'}:3: expected 5 tab-separated columns, found 4" in err
    assert not (tmp_path / "out").exists()


def test_mrpc_offline_download_is_one_clear_error(fixture_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(mrpc, "MRPC_SOURCES", {n: (f"http://127.0.0.1:9/{n}", None) for n in mrpc.MRPC_SOURCES})
    code, _, err = bertkit(capsys, "mrpc", "--data_dir", tmp_path / "empty", "--init_checkpoint", fixture_model,
                           "--output_dir", tmp_path / "out")
    assert code == 2 and err.count("\n") == 1 and "cannot download http://127.0.0.1:9/" in err


@pytest.mark.parametrize("argv, message", [
    (["mrpc", "--data_dir", "{mrpc}", "--output_dir", "{tmp}/o", "--init_checkpoint", "{tmp}/nothing"],
     "nothing: no such checkpoint folder or zip"),
    (["squad", "--train_file", "{tmp}/missing.json", "--output_dir", "{tmp}/o", "--init_checkpoint", "{model}"],
     "missing.json: no such file"),
    (["squad", "--output_dir", "{tmp}/o", "--init_checkpoint", "{model}"], "--do_train needs --train_file"),
    (["squad", "--do_train=false", "--output_dir", "{tmp}/o", "--init_checkpoint", "{model}"], "nothing to do"),
    (["mrpc", "--data_dir", "{mrpc}", "--output_dir", "{tmp}/o", "--init_checkpoint", "{model}",
      "--max_seq_length", "1024"], "--max_seq_length 1024 exceeds the model's max_position_embeddings 512"),
    (["mrpc", "--data_dir", "{mrpc}", "--output_dir", "{tmp}/o", "--init_checkpoint", "{model}",
      "--learning_rate", "0"], "--learning_rate must be > 0"),
    (["mrpc", "--data_dir", "{mrpc}", "--output_dir", "{tmp}/o", "--init_checkpoint", "{model}",
      "--warmup_proportion", "-0.5"], "--warmup_proportion must be >= 0"),
    (["mrpc", "--data_dir", "{mrpc}", "--output_dir", "{tmp}/o", "--init_checkpoint", "{model}",
      "--train_batch_size", "many"], "argument --train_batch_size"),
    (["mrpc", "--data_dir", "{mrpc}", "--output_dir", "{tmp}/o", "--bogus_flag", "1"], "unrecognized arguments: --bogus_flag"),
    (["mrpc", "--data_dir", "{mrpc}", "--init_checkpoint", "{model}"], "--output_dir"),
    (["mrpc", "--data_dir", "{mrpc}", "--output_dir", "{tmp}/o"], "give --init_checkpoint"),
    (["--task_name=CoLA", "--data_dir", "{mrpc}", "--output_dir", "{tmp}/o"], "task 'CoLA': bertkit fine-tunes mrpc, squad, ner only"),
    (["squad", "--task_name=MRPC", "--output_dir", "{tmp}/o"], "disagree"),
    (["--data_dir", "{mrpc}", "--output_dir", "{tmp}/o"], "name the task"),
    (["squad", "--train_file", "{tmp}/bad.json", "--output_dir", "{tmp}/o", "--init_checkpoint", "{model}"],
     "bad.json:1:2: malformed JSON"),
])
def test_bad_flags_and_files_are_one_line_errors(argv, message, mrpc_dir, fixture_model, tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{oops")
    argv = [a.format(mrpc=mrpc_dir, tmp=tmp_path, model=fixture_model) for a in argv]
    code, out, err = bertkit(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "o").exists()  # nothing written


def test_split_task():
    assert split_task(["mrpc", "--do_eval"]) == ("mrpc", ["--do_eval"])
    assert split_task(["--task_name", "MRPC", "--do_eval"]) == ("mrpc", ["--task_name", "MRPC", "--do_eval"])
    assert split_task(["SQuAD"]) == ("squad", [])
    assert split_task(["--help"]) == (None, [])


def test_layerwise_lr_decay_steps_each_layer_at_its_rate():
    """One step of the layer-wise optimizer equals torch's AdamW given each group's rate by hand:
    lr * decay ** (L + 1 - depth), embeddings at depth 0 and the heads at L + 1."""
    from bertkit.model import BertForSequenceClassification
    from bertkit.optim import make_finetune_optimizer
    from synthetic import CONFIG  # 2 layers

    torch.manual_seed(0)
    model = BertForSequenceClassification(CONFIG)
    twin = BertForSequenceClassification(CONFIG)
    twin.load_state_dict(model.state_dict())
    for p, q in zip(model.parameters(), twin.parameters()):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    opt = make_finetune_optimizer(model, lr=1e-2, weight_decay=0.01, layerwise_lr_decay=0.5)
    for g in opt.param_groups:
        g["lr"] = 1e-2  # what the training loop does every step
    opt.step()
    assert all(g["lr"] == 1e-2 for g in opt.param_groups)

    def rate(name):
        depth = 0 if "embeddings" in name else int(name.split(".")[2]) + 1 if ".layers." in name else 3
        return 1e-2 * 0.5 ** (3 - depth)

    no_decay = lambda n, p: p.ndim == 1  # noqa: E731 - biases, LayerNorm and nothing else here
    groups = [{"params": [p], "lr": rate(n), "weight_decay": 0.0 if no_decay(n, p) else 0.01}
              for n, p in twin.named_parameters()]
    torch.optim.AdamW(groups, eps=1e-6).step()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7, msg=name)


def test_unset_flags_take_the_recipe_of_the_model_size():
    """Optimisation flags left unset take the small-model recipe below 30M encoder parameters and
    Google's above; a flag given keeps its value."""
    from bertkit.config import variant
    from bertkit.tasks.finetune import mrpc as mrpc_task
    from bertkit.tasks.finetune.runner import FinetuneSettings

    def settings(model: str, *argv: str) -> FinetuneSettings:
        args = mrpc_task.parser().parse_args(["--data_dir", "x", "--output_dir", "y", "--bert_config_file", model,
                                              *argv])
        return FinetuneSettings.from_args(args, "MRPC")

    def chosen(model: str, *argv: str):
        s = settings(model, *argv).resolved(variant(model), log=lambda msg: None)
        return s.learning_rate, s.num_train_epochs, s.train_batch_size, s.layerwise_lr_decay

    assert chosen("small") == (2e-4, 5.0, 16, 0.8)  # 4 x 512: 12.6M encoder parameters
    assert chosen("base") == (5e-5, 3.0, 32, 1.0)  # run_classifier.py's defaults
    # A learning rate given keeps Google's meaning: one rate for every layer, Google's batch; the
    # recipe's extras apply only when their own flags ask for them.
    assert chosen("small", "--learning_rate", "2e-5") == (2e-5, 5.0, 32, 1.0)
    assert chosen("small", "--train_batch_size", "32", "--learning_rate", "1e-4") == (1e-4, 5.0, 32, 1.0)
    assert chosen("small", "--learning_rate", "2e-5", "--layerwise_lr_decay", "0.8", "--train_batch_size", "16") \
        == (2e-5, 5.0, 16, 0.8)
    said = []
    settings("small", "--learning_rate", "2e-5").resolved(variant("small"), log=said.append)
    assert said[-1] == ("--learning_rate 2e-05 given: one rate for every layer, as in Google's scripts; the "
                        "small-model recipe's layerwise_lr_decay 0.8 and train_batch_size 16 apply only when "
                        "their own flags ask for them")
    assert "layerwise_lr_decay 1.0" in said[0] and "train_batch_size 32" in said[0]  # what was applied
