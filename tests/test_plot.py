"""`bertkit plot` draws a training log and refuses bad input cleanly."""

import json

from bertkit.cli import main as cli


def test_plot_writes_an_image_of_the_log(tmp_path, capsys):
    log = tmp_path / "run" / "log.jsonl"
    log.parent.mkdir()
    log.write_text("".join(json.dumps({"step": s, "loss": 10 - s / 10, **({"eval_mlm_loss": 9.5 - s / 20} if s % 5 == 0 else {})}) + "\n"
                           for s in range(1, 21)))
    out = tmp_path / "curve.png"
    assert cli(["plot", str(log), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    assert cli(["plot", str(log), "-o", str(out), "--keys", "nothing"]) == 2
    assert "none of nothing" in capsys.readouterr().err
    log.write_text('{"step": 1, "loss": 2}\nnot json\n')
    assert cli(["plot", str(log), "-o", str(out)]) == 2
    assert "log.jsonl:2" in capsys.readouterr().err


def png_size(path):
    data = path.read_bytes()
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plot_draws_eval_accuracy_against_steps_and_training_seconds(tmp_path, capsys):
    """A pretraining log with --eval_every: losses and the masked-LM accuracy (a panel each), against
    steps and against training seconds (a column each); one axis when asked for one."""
    log = tmp_path / "run" / "log.jsonl"
    log.parent.mkdir()
    lines = []
    for s in range(1, 21):
        lines.append({"step": s, "loss": 10 - s / 10, "train_s": 0.5 * s, "wall_s": 2 + 0.6 * s})
        if s % 5 == 0:
            lines.append({"step": s, "eval_mlm_loss": 9 - s / 5, "eval_mlm_accuracy": s / 40, "train_s": 0.5 * s})
    log.write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = tmp_path / "curve.png"
    assert cli(["plot", str(log), "-o", str(out)]) == 0
    assert png_size(out) == (6 * 2 * 120, round(3.6 * 2 * 120))  # 2 panels x 2 axes
    assert cli(["plot", str(log), "-o", str(out), "--x", "seconds", "--keys", "eval_mlm_accuracy"]) == 0
    assert png_size(out) == (6 * 120, round(3.6 * 120))
    # a log of an older run has no seconds: steps alone, or one line naming what is missing
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 5)))
    assert cli(["plot", str(log), "-o", str(out)]) == 0
    assert png_size(out) == (6 * 120, round(3.6 * 120))
    assert cli(["plot", str(log), "-o", str(out), "--x", "wall"]) == 2
    assert "has wall_s" in capsys.readouterr().err
