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
