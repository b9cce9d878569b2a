"""What the seed's scripts leave in --output_dir, and the flags they take, to the letter: run_squad.py's
--do_eval, predictions.json / nbest_predictions.json / null_odds.json, run_classifier.py's
eval_results.txt."""

import json

from bertkit.cli import main as cli_main
from conftest import DATA, FIXTURES

SQUAD = DATA / "squad" / "dev-v1.1-even-articles.json"
SMALL = ["--max_seq_length", "96", "--doc_stride", "32", "--max_query_length", "24", "--device", "cpu"]


def squad_questions(n: int, answers: bool = True) -> dict:
    article = json.loads(SQUAD.read_text())["data"][0]
    paragraph = dict(article["paragraphs"][0])
    paragraph["qas"] = [dict(qa, answers=qa["answers"] if answers else []) for qa in paragraph["qas"][:n]]
    return {"version": "1.1", "data": [{"title": article["title"], "paragraphs": [paragraph]}]}


def test_squad_do_eval_scores_the_predictions_or_says_it_cannot(fixture_model, tmp_path, capsys):
    (tmp_path / "dev.json").write_text(json.dumps(squad_questions(3)))
    (tmp_path / "bare.json").write_text(json.dumps(squad_questions(3, answers=False)))
    # run_squad.py --do_eval=True (without --do_predict): predictions, then their scores
    assert cli_main(["finetune", "squad", "--do_train=False", "--do_eval=True", "--predict_file",
                     str(tmp_path / "dev.json"), "--init_checkpoint", str(fixture_model),
                     "--output_dir", str(tmp_path / "a"), *SMALL]) == 0
    err = capsys.readouterr().err
    results = json.loads((tmp_path / "a" / "eval_results.json").read_text())
    assert set(results) == {"exact_match", "f1", "total"} and results["total"] == 3
    assert f"eval: exact_match {results['exact_match']:.4g}, f1 {results['f1']:.4g}" in err
    assert {p.name for p in (tmp_path / "a").iterdir()} >= {"predictions.json", "nbest_predictions.json"}
    # a predict file without answers: said so, predictions still written
    assert cli_main(["finetune", "squad", "--do_train=False", "--do_eval", "--predict_file",
                     str(tmp_path / "bare.json"), "--init_checkpoint", str(fixture_model),
                     "--output_dir", str(tmp_path / "b"), *SMALL]) == 0
    err = capsys.readouterr().err
    assert f"--do_eval: {tmp_path / 'bare.json'} has no answers to score against" in err
    assert (tmp_path / "b" / "predictions.json").is_file() and not (tmp_path / "b" / "eval_results.json").exists()
    # --do_eval without a predict file: one line naming the flag
    assert cli_main(["finetune", "squad", "--do_train=False", "--do_eval", "--init_checkpoint", str(fixture_model),
                     "--output_dir", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err.strip().endswith("--do_eval needs --predict_file")


def read_dllog(path) -> list[dict]:
    """dllogger's JSON stream as its documentation gives it: each line `DLLL ` and one JSON object
    with timestamp, datetime, elapsedtime (strings), type, step and data. JSONStreamBackend.log
    writes type "LOG" for every record; the settings are the record whose step is "PARAMETER"
    (dllogger's README: `step="PARAMETER"` for script parameters, a tuple, here a list, for progress
    and `()` for the summary of the whole run)."""
    from datetime import datetime

    records = []
    for line in path.read_text().splitlines():
        assert line.startswith("DLLL "), line
        rec = json.loads(line[len("DLLL "):])
        assert set(rec) == {"timestamp", "datetime", "elapsedtime", "type", "step", "data"}, rec
        assert all(isinstance(rec[k], str) for k in ("timestamp", "datetime", "elapsedtime"))
        assert datetime.fromisoformat(rec["datetime"]).timestamp() == float(rec["timestamp"])
        assert rec["type"] == "LOG" and isinstance(rec["data"], dict)
        step = rec["step"]
        assert step == "PARAMETER" or isinstance(step, int) or (
            isinstance(step, list) and all(isinstance(i, int) for i in step)), step
        records.append(rec)
    return records


def test_pretraining_dllog_reads_back_as_dllogger_writes_it(fixture_model, tmp_path):
    out = tmp_path / "phase_1"
    dllog = tmp_path / "logs" / "bert_dllog.json"
    assert cli_main(["pretrain", "--input_files_dir", str(FIXTURES / "pretrain_seq128.tfrecord"),
                     "--init_checkpoint", str(fixture_model), "--output_dir", str(out), "--train_batch_size", "2",
                     "--max_seq_length", "128", "--max_predictions_per_seq", "20", "--num_train_steps", "3",
                     "--num_warmup_steps", "1", "--learning_rate", "1e-3", "--log_every", "1", "--device", "cpu",
                     f"--dllog_path={dllog}"]) == 0
    records = read_dllog(dllog)
    steps = [r["step"] for r in records]
    assert steps == ["PARAMETER", 1, 2, 3, []]  # settings once, each logged step, the summary
    assert records[0]["data"]["num_train_steps"] == 3 and records[0]["data"]["dllog_path"] == str(dllog)
    assert all({"loss", "lr", "mlm_loss", "nsp_loss"} <= set(r["data"]) for r in records[1:4])
    assert [float(r["elapsedtime"]) for r in records] == sorted(float(r["elapsedtime"]) for r in records)
    # bertkit's own log is there as before, with the same numbers
    own = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "step"} for r in own] == [r["data"] for r in records[1:4]]


def test_mrpc_eval_results_txt_as_run_classifier_writes_it(fixture_model, tmp_path):
    data = tmp_path / "mrpc"
    data.mkdir()
    for split, rows in (("train", 16), ("dev", 8)):
        lines = (DATA / "mrpc" / "glue" / f"{split}.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
        (data / f"{split}.tsv").write_text("".join(lines[:rows + 1]), encoding="utf-8")
    out = tmp_path / "out"
    assert cli_main(["finetune", "--task_name=MRPC", "--do_train=true", "--do_eval=true", "--data_dir", str(data),
                     "--init_checkpoint", str(fixture_model), "--output_dir", str(out), "--train_batch_size", "8",
                     "--num_train_epochs", "1", "--max_seq_length", "64", "--device", "cpu"]) == 0
    results = json.loads((out / "eval_results.json").read_text())
    lines = (out / "eval_results.txt").read_text().splitlines()
    assert [line.split(" = ")[0] for line in lines] == ["eval_accuracy", "eval_loss", "global_step", "loss"]
    values = dict(line.split(" = ") for line in lines)
    assert float(values["eval_accuracy"]) == results["accuracy"] and float(values["eval_loss"]) == results["loss"]
    assert values["global_step"] == "2"  # 16 pairs, batch 8, one epoch


def test_resumed_pretraining_progress_starts_at_the_resumed_step(fixture_model, tmp_path, monkeypatch):
    from bertkit import runlog

    shown = []
    original = runlog.RunLog.advance

    def advance(self, n=1):
        shown.append(n)
        original(self, n)

    monkeypatch.setattr(runlog.RunLog, "advance", advance)
    argv = ["pretrain", "--input_files_dir", str(FIXTURES / "pretrain_seq128.tfrecord"), "--init_checkpoint",
            str(fixture_model), "--output_dir", str(tmp_path / "out"), "--train_batch_size", "2",
            "--max_seq_length", "128", "--max_predictions_per_seq", "20", "--num_warmup_steps", "0",
            "--learning_rate", "1e-3", "--device", "cpu"]
    assert cli_main([*argv, "--num_train_steps", "2"]) == 0
    assert shown == [1, 1]
    shown.clear()
    assert cli_main([*argv, "--num_train_steps", "3"]) == 0  # resumes at step 2
    assert shown == [2, 1]  # the bar jumps to 2 before the first new step
