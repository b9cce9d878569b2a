"""What the seed's scripts leave in --output_dir, and the flags they take, to the letter: run_squad.py's
--do_eval, predictions.json / nbest_predictions.json / null_odds.json, run_classifier.py's
eval_results.txt."""

import json

from bertkit.cli import main as cli_main
from conftest import DATA

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
