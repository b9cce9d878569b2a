"""`--overwrite` takes the same forms in every command: the bare switch, `--overwrite true`,
`--overwrite=false` (parse_bool's forms, as the training and data commands always took)."""

import shutil

import pytest

from bertkit.cli import main as cli


@pytest.mark.parametrize("form", [["--overwrite"], ["--overwrite", "true"], ["--overwrite=True"], ["--overwrite", "1"]])
def test_convert_download_and_plot_take_every_form(form, fixture_model, google_zip, tmp_path, capsys):
    out = tmp_path / "converted"
    out.mkdir()
    assert cli(["convert", "--input", str(fixture_model), "--output", str(out), *form]) == 0
    assert (out / "model.safetensors").is_file()
    cache = tmp_path / "cache"  # the zip already there: no download
    cache.mkdir()
    shutil.copy(google_zip, cache / google_zip.name)
    assert cli(["download-model", "tiny", "--cache", str(cache), "-o", str(out), *form]) == 0
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n')
    (tmp_path / "curve.png").write_bytes(b"old")
    assert cli(["plot", str(log), "-o", str(tmp_path / "curve.png"), *form]) == 0
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"


def test_overwrite_false_keeps_what_is_there(fixture_model, tmp_path, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "curve.png").write_bytes(b"mine")
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n')
    for argv in (["convert", "--input", str(fixture_model), "--output", str(tmp_path / "o"), "--overwrite=false"],
                 ["plot", str(log), "-o", str(tmp_path / "curve.png"), "--overwrite", "false"]):
        assert cli(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "already exists" in err
    assert (tmp_path / "curve.png").read_bytes() == b"mine" and not any((tmp_path / "o").iterdir())
