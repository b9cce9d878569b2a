"""`bertkit finetune ner` end to end on the tiny Google checkpoint (the fixture, 2 layers, hidden
128) and real CoNLL-2003 sentences (slices of the training file, written to a temporary folder):
scores against seqeval on the written predictions, the exported tagger against transformers
(logits, and the loss and tags of the evaluation), `bertkit predict` reproducing the evaluation,
re-evaluation from the task record, windows,
two processes against one, resume and SIGTERM, the dllogger stream and the plot, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score
from seqeval.metrics.sequence_labeling import get_entities

from bertkit.checkpoint import list_checkpoints, load_model_folder
from bertkit.cli import main as cli_main
from bertkit.model import BertForTokenClassification
from bertkit.tasks.finetune import ner_data as nd
from conftest import DATA, REPO

CONLL = DATA / "conll2003" / "train.txt"
TINY = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 128}
FAST = ["--train_batch_size", "16", "--eval_batch_size", "8", "--device", "cpu", "--log_every", "5"]


def write_conll(path, sentences):
    """The sentences' own lines of the CoNLL-2003 file (word POS chunk tag), a blank line after each."""
    lines = CONLL.read_text(encoding="utf-8").split("\n")
    path.write_text("".join("".join(lines[n - 1] + "\n" for n in s.lines) + "\n" for s in sentences), encoding="utf-8")


@pytest.fixture(scope="module")
def ner_files(tmp_path_factory):
    """Of the file's first 2,000 sentences those with at least 40% of their words in entities (so that
a tiny model tags some in a few steps, not only O): 160 to train on; 40 to validate, whose tags the
training ones all have; 24 to tag, as JSON Lines without tags."""
    d = tmp_path_factory.mktemp("ner")
    sentences = [s for s in nd.read_tagged(CONLL)[:2000] if sum(t != "O" for t in s.tags) >= 0.4 * len(s.tags)]
    train = sentences[:160]
    labels = {t for s in train for t in s.tags}
    rest = [s for s in sentences[160:] if set(s.tags) <= labels]
    write_conll(d / "train.txt", train)
    write_conll(d / "dev.txt", rest[:40])
    (d / "test.jsonl").write_text("".join(json.dumps({"tokens": s.words}) + "\n" for s in rest[40:64]))
    return d


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory, ner_files, fixture_model):
    out = tmp_path_factory.mktemp("ner_out")
    code = cli_main(["finetune", "ner", "--train_file", str(ner_files / "train.txt"),
                     "--validation_file", str(ner_files / "dev.txt"), "--test_file", str(ner_files / "test.jsonl"),
                     "--init_checkpoint", str(fixture_model), "--output_dir", str(out / "run"), "--learning_rate", "2e-3",
                     "--num_train_epochs", "3", "--eval_every", "10", "--dllog_path", str(out / "dllog.json"), *FAST])
    assert code == 0
    return out / "run"


def read_predictions(path):
    """Sentences of (word, gold, predicted) rows from a conlleval-format file."""
    sentences = [[]]
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line:
            sentences[-1].append(line.split(" "))
        elif sentences[-1]:
            sentences.append([])
    return [s for s in sentences if s]


def test_ner_outputs_score_as_seqeval(ner_run, ner_files):
    results = json.loads((ner_run / "eval_results.json").read_text())
    dev = nd.read_tagged(ner_files / "dev.txt")
    rows = read_predictions(ner_run / "eval_predictions.txt")
    assert [[r[0] for r in s] for s in rows] == [s.words for s in dev]
    assert [[r[1] for r in s] for s in rows] == [s.tags for s in dev]
    gold, pred = [[r[1] for r in s] for s in rows], [[r[2] for r in s] for s in rows]
    assert results["f1"] == pytest.approx(f1_score(gold, pred), abs=1e-12)
    assert results["precision"] == pytest.approx(precision_score(gold, pred), abs=1e-12)
    assert results["recall"] == pytest.approx(recall_score(gold, pred), abs=1e-12)
    assert results["accuracy"] == pytest.approx(accuracy_score(gold, pred), abs=1e-12)
    report = classification_report(gold, pred, output_dict=True, zero_division=0)
    for t, r in results["per_type"].items():
        assert (r["precision"], r["recall"], r["f1"], r["support"]) == pytest.approx(
            (report[t]["precision"], report[t]["recall"], report[t]["f1-score"], report[t]["support"]), abs=1e-12)
    assert results["sentences"] == 40 and results["tag_scheme"] == "IOB1"
    assert results["correct_entities"] > 0 and results["predicted_entities"] > 0  # more than all O in 30 steps
    # Google's eval_results.txt lines hold the same numbers
    txt = dict(line.split(" = ") for line in (ner_run / "eval_results.txt").read_text().splitlines())
    assert float(txt["eval_f1"]) == results["f1"] and float(txt["eval_loss"]) == results["loss"]
    assert int(txt["global_step"]) == 30 and float(txt["eval_PER_f1"]) == results["per_type"]["PER"]["f1"]
    # the test file (no tags): every word tagged, two columns
    test = [json.loads(line)["tokens"] for line in (ner_files / "test.jsonl").read_text().splitlines()]
    tagged = read_predictions(ner_run / "test_predictions.txt")
    assert [[r[0] for r in s] for s in tagged] == test and {len(r) for s in tagged for r in s} == {2}
    assert not (ner_run / "test_results.json").exists()
    # the task record: the training file's sorted tags, the scheme, max_seq_length
    train_tags = {t for s in nd.read_tagged(ner_files / "train.txt") for t in s.tags}
    task = json.loads(next(ner_run.glob("ckpt-*/task.json")).read_text())
    assert (task["task"], task["head"], task["labels"]) == ("ner", "token_classification", sorted(train_tags))
    assert task["extra"]["tag_scheme"] == "IOB1" and task["max_seq_length"] == 128
    # --eval_every 10: scores in the log at steps 10, 20 and the end
    evals = [r for r in map(json.loads, (ner_run / "log.jsonl").read_text().splitlines()) if "eval_f1" in r]
    assert [r["step"] for r in evals] == [10, 20, 30] and evals[-1]["eval_f1"] == results["f1"]


def test_tagger_agrees_with_transformers(ner_run, ner_files, tmp_path, monkeypatch):
    """The checkpoint exported for transformers loads in its BertForTokenClassification with the
    label names; on real sentences (its own tokenizer, first pieces) it gives bertkit's logits to
    1e-5, and the loss and tags of eval_results.json and eval_predictions.txt."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import transformers

    ckpt = next(ner_run.glob("ckpt-*"))
    assert cli_main(["convert", "--input", str(ckpt), "--output", str(tmp_path / "hf"), "--format", "hf"]) == 0
    labels = json.loads((ckpt / "task.json").read_text())["labels"]
    hf = transformers.BertForTokenClassification.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.id2label == dict(enumerate(labels)) and hf.config.label2id == {t: i for i, t in enumerate(labels)}
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    dev = nd.read_tagged(ner_files / "dev.txt")
    enc = tok([s.words for s in dev], is_split_into_words=True, padding=True, return_tensors="pt")
    assert enc["attention_mask"].sum(1).max() <= 128  # no sentence needs a window here
    with torch.no_grad():
        theirs = hf(**enc).logits  # (B, T, L)
        config, state, _, _ = load_model_folder(ckpt)
        ours_model = BertForTokenClassification(config, len(labels)).eval()
        ours_model.load_state_dict(state)
        ours = ours_model(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"])
    assert ours_model.bert.path == "unpadded"
    real = enc["attention_mask"].bool()
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=0)
    nll, predicted = [], []
    for i, s in enumerate(dev):
        words, firsts = enc.word_ids(i), []
        for p, w in enumerate(words):
            if w is not None and (p == 0 or words[p - 1] != w):
                firsts.append(p)
        logp = theirs[i, firsts].log_softmax(-1)  # (words, L)
        nll += [-logp[k, labels.index(t)].item() for k, t in enumerate(s.tags)]
        predicted.append([labels[j] for j in logp.argmax(-1).tolist()])
    results = json.loads((ner_run / "eval_results.json").read_text())
    assert results["loss"] == pytest.approx(np.mean(nll), abs=1e-5)
    assert [[r[2] for r in s] for s in read_predictions(ner_run / "eval_predictions.txt")] == predicted


def test_predict_reproduces_the_evaluation(ner_run, ner_files, tmp_path):
    """`bertkit predict` on the validation file gives the tags that score as eval_results.json;
    its entities are the chunks of those tags; plain text (spaced at will) and JSON Lines inputs
    of the same words get the same tags, and plain text the character offsets of each entity."""
    assert cli_main(["predict", "-m", str(ner_run), "-i", str(ner_files / "dev.txt"), "-o", str(tmp_path / "p.jsonl"),
                     "--device", "cpu"]) == 0
    objects = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    dev = nd.read_tagged(ner_files / "dev.txt")
    assert [o["words"] for o in objects] == [s.words for s in dev] and [o["line"] for o in objects] == [s.lines[0] for s in dev]
    gold, pred = [s.tags for s in dev], [o["tags"] for o in objects]
    results = json.loads((ner_run / "eval_results.json").read_text())
    assert (results["f1"], results["precision"], results["recall"], results["accuracy"]) == pytest.approx(
        (f1_score(gold, pred), precision_score(gold, pred), recall_score(gold, pred), accuracy_score(gold, pred)),
        abs=1e-12)
    assert sum(len(o["entities"]) for o in objects) == results["predicted_entities"] > 0
    for o in objects:
        assert [(e["type"], e["start"], e["end"] - 1) for e in o["entities"]] == get_entities(o["tags"])
        assert all(e["text"] == " ".join(o["words"][e["start"]:e["end"]]) and 0 < e["score"] <= 1 for e in o["entities"])
    # the same sentences as plain text, words two spaces apart after the first, and as JSON Lines
    lines = [" ".join(s.words[:1]) + "".join("  " + w for w in s.words[1:]) for s in dev]
    (tmp_path / "dev.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps({"tokens": s.words}) + "\n" for s in dev))
    for name in ("dev.txt", "dev.jsonl"):
        assert cli_main(["predict", "-m", str(ner_run), "-i", str(tmp_path / name), "-o", str(tmp_path / f"{name}.out"),
                         "--device", "cpu"]) == 0
        again = [json.loads(line) for line in (tmp_path / f"{name}.out").read_text().splitlines()]
        assert [o["tags"] for o in again] == pred
    again_text = [json.loads(x) for x in (tmp_path / "dev.txt.out").read_text().splitlines()]
    for o, line in zip(again_text, lines):
        for e in o["entities"]:
            assert line[e["char_start"]:e["char_end"]] == e["text"] and e["text"].split() == o["words"][e["start"]:e["end"]]
    assert any("  " in e["text"] for o in again_text for e in o["entities"])


def test_re_evaluation_reads_the_task_record(ner_run, ner_files, tmp_path, capsys):
    """--do_train=false on the output folder: the labels and scheme come from the task record and
    the scores are the same; at --max_seq_length 16 sentences go in windows and every word is still
    tagged and scored."""
    argv = ["finetune", "ner", "--init_checkpoint", str(ner_run), "--validation_file", str(ner_files / "dev.txt"),
            "--do_train=false", *FAST]
    assert cli_main([*argv, "--output_dir", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "eval_results.json").read_text())
    assert again == json.loads((ner_run / "eval_results.json").read_text())  # the same weights, the same batches
    assert cli_main([*argv, "--output_dir", str(tmp_path / "short"), "--max_seq_length", "16"]) == 0
    rows = read_predictions(tmp_path / "short" / "eval_predictions.txt")
    short = json.loads((tmp_path / "short" / "eval_results.json").read_text())
    assert [[r[0] for r in s] for s in rows] == [s.words for s in nd.read_tagged(ner_files / "dev.txt")]
    gold, pred = [[r[1] for r in s] for s in rows], [[r[2] for r in s] for s in rows]
    assert short["f1"] == pytest.approx(f1_score(gold, pred), abs=1e-12) and short["tokens"] == again["tokens"]


def test_two_processes_score_as_one(ner_run, ner_files, tmp_path):
    """Evaluation spread over 2 processes (torchrun, gloo) gives the numbers and predictions of one."""
    cmd = ["-m", "bertkit", "finetune", "ner", "--init_checkpoint", str(ner_run), "--do_train=false",
           "--validation_file", str(ner_files / "dev.txt"), *FAST]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *cmd,
                        "--output_dir", str(tmp_path / "two")], capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([sys.executable, *cmd, "--output_dir", str(tmp_path / "one")], capture_output=True, text=True,
                       timeout=300, cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("eval_results.json", "eval_predictions.txt"):
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text()


def test_dllog_and_plot(ner_run, tmp_path):
    lines = (ner_run.parent / "dllog.json").read_text().splitlines()
    records = [json.loads(line.removeprefix("DLLL ")) for line in lines]
    assert all(line.startswith("DLLL {") for line in lines)
    assert records[0]["step"] == "PARAMETER" and records[0]["data"]["task"] == "ner"
    assert records[-1]["step"] == [] and any(r["step"] == 30 and "eval_f1" in r["data"] for r in records)
    assert cli_main(["plot", str(ner_run / "log.jsonl"), "-o", str(tmp_path / "curve.png")]) == 0
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sigterm_then_resume_ends_where_an_undisturbed_run_ends(ner_files, tmp_path):
    """SIGTERM mid-run saves the current step and exits 143; the same command resumes there and
    ends with the weights of a run never stopped (length-grouped batches, CPU; a 2-layer H32 model)."""
    (tmp_path / "bert_config.json").write_text(json.dumps(TINY))

    def argv(out):
        return ["finetune", "ner", "--train_file", str(ner_files / "train.txt"), "--bert_config_file",
                str(tmp_path / "bert_config.json"), "--output_dir", str(out), "--learning_rate", "1e-3",
                "--num_train_epochs", "10", "--group_by_length", "--save_checkpoints_steps", "1000", *FAST]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "bertkit", *argv(tmp_path / "stopped")], stderr=subprocess.PIPE,
                         text=True, env=env, cwd=REPO)
    log, deadline = tmp_path / "stopped" / "log.jsonl", time.time() + 120
    while not log.exists() or '"step"' not in log.read_text():  # training has started
        assert p.poll() is None and time.time() < deadline
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 143, p.stderr.read()[-2000:]
    (saved,) = list_checkpoints(tmp_path / "stopped")
    assert "SIGTERM" in p.stderr.read() and saved.name < "ckpt-00000100"
    r = subprocess.run([sys.executable, "-m", "bertkit", *argv(tmp_path / "stopped")], capture_output=True,
                       text=True, env=env, cwd=REPO, timeout=300)
    assert r.returncode == 0 and "resumed from" in r.stderr, r.stderr[-2000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the runs above: bit-exact sums need the same thread count
    try:
        assert cli_main(argv(tmp_path / "whole")) == 0
    finally:
        torch.set_num_threads(threads)
    a = load_model_folder(tmp_path / "stopped" / "ckpt-00000100")[1]
    b = load_model_folder(tmp_path / "whole" / "ckpt-00000100")[1]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- bad input: one line naming the file and line, exit 2, no output folder -----------------------

BAD_INPUTS = {
    "jsonl_tags_and_tokens_differ": ("train.jsonl", b'{"tokens": ["EU", "rejects"], "tags": ["I-ORG", "O"]}\n'
                                     b'{"tokens": ["Peter", "Blackburn"], "tags": ["I-PER"]}\n',
                                     "train.jsonl:2: 1 tags for 2 tokens"),
    "conll_wrong_field_count": ("train.txt", b"EU NNP I-NP I-ORG\nrejects VBZ I-VP O\n\nPeter NNP I-PER\n",
                                "train.txt:4: 3 space-separated fields, but the file's lines have 4"),
    "empty_file": ("train.txt", b"\n\n", "train.txt: empty file"),
    "not_utf8": ("train.txt", b"EU NNP I-NP I-ORG\nr\xe9jects VBZ I-VP O\n", "train.txt:2:2: not valid UTF-8"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_training_file_is_one_line_and_writes_nothing(case, tmp_path, fixture_model, capsys):
    name, content, message = BAD_INPUTS[case]
    (tmp_path / name).write_bytes(content)
    code = cli_main(["finetune", "ner", "--train_file", str(tmp_path / name), "--init_checkpoint", str(fixture_model),
                     "--output_dir", str(tmp_path / "out"), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_validation_tag_unseen_in_training_is_one_line_and_writes_nothing(ner_files, tmp_path, fixture_model, capsys):
    (tmp_path / "dev.txt").write_text("EU NNP I-NP I-ORG\n\nin IN I-PP O\nWales NNP I-NP I-LOC\nnow RB I-ADVP B-TIME\n")
    code = cli_main(["finetune", "ner", "--train_file", str(ner_files / "train.txt"),
                     "--validation_file", str(tmp_path / "dev.txt"), "--init_checkpoint", str(fixture_model),
                     "--output_dir", str(tmp_path / "out"), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and "dev.txt:5: tag 'B-TIME' never appears in the training file" in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
