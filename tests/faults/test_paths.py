"""Archive and output-folder safety. Downloaded archives cannot write outside their target (the
cases tests/test_download.py leaves out: a tar symlink followed by a file written through it, zip
names with Windows separators). No command writes over another run's outputs without --overwrite
(or, for training, resuming the same run)."""

import importlib.util
import io
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from bertkit import BertkitError
from bertkit.checkpoint import list_checkpoints, verify_folder
from bertkit.cli import main as bertkit
from bertkit.fetch import extract
from conftest import DATA, FIXTURES
from tiny import one_line, pretrain_args, tiny_setup

HAS_FINETUNE = importlib.util.find_spec("bertkit.tasks.finetune.mrpc") is not None


def everything_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def tar_with(path: Path, members: list[tuple[str, bytes, str | None]]) -> Path:
    """members: (name, data, symlink target or None)."""
    with tarfile.open(path, "w") as t:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                t.addfile(info)
            else:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return path


def zip_with(path: Path, names: list[str]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name in names:
            z.writestr(zipfile.ZipInfo(name), b"x")
    return path


@pytest.mark.parametrize("case", ["tar symlink then write through it", "tar symlink to a folder inside",
                                  "zip ..\\..\\evil", "zip model\\..\\..\\evil", "zip \\evil"])
def test_archives_cannot_write_outside(tmp_path, case):
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = {
        "tar symlink then write through it": lambda: tar_with(tmp_path / "a.tar", [
            ("model/vocab.txt", b"[PAD]\n", None), ("model/escape", b"", str(outside)),
            ("model/escape/evil", b"written through the link", None)]),
        "tar symlink to a folder inside": lambda: tar_with(tmp_path / "a.tar", [
            ("model/sub/keep", b"k", None), ("model/link", b"", "sub"),
            ("model/link/../../../outside/evil", b"x", None)]),
        "zip ..\\..\\evil": lambda: zip_with(tmp_path / "a.zip", ["model/vocab.txt", "..\\..\\evil"]),
        "zip model\\..\\..\\evil": lambda: zip_with(tmp_path / "a.zip", ["model/vocab.txt", "model\\..\\..\\evil"]),
        "zip \\evil": lambda: zip_with(tmp_path / "a.zip", ["model/vocab.txt", "\\evil"]),
    }[case]()
    target = tmp_path / "target"
    with pytest.raises(BertkitError, match="refusing to unpack") as e:
        extract(archive, target)
    assert str(archive) in str(e.value)
    assert not any(outside.iterdir()) and not list(tmp_path.glob("evil*"))
    assert not any(target.iterdir())  # every member is checked before the first is written


def test_a_plain_archive_still_unpacks(tmp_path):
    archive = tar_with(tmp_path / "a.tar", [("model/vocab.txt", b"[PAD]\n", None), ("model/sub/x", b"x", None)])
    assert everything_under(extract(archive, tmp_path / "t")) == {"model", "model/vocab.txt", "model/sub",
                                                                  "model/sub/x"}


# ---- output folders ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A folder holding a tiny pretraining run's checkpoints (steps 3 and 4)."""
    setup = tiny_setup(tmp_path_factory)
    out = tmp_path_factory.mktemp("run") / "out"
    assert bertkit(pretrain_args(setup, out, 4)) == 0
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_commands_do_not_write_over_a_run(run_dir, fixture_model, tmp_path, capsys):
    before = snapshot(run_dir)
    commands = {
        "convert": (["convert", "-i", str(fixture_model), "-o", str(run_dir)], "already exists"),
        "download-model": (["download-model", "tiny", "-o", str(run_dir)], "already exists"),
        "data create": (["data", "create", str(FIXTURES / "sample_text.txt"), "-o", str(run_dir), "--workers", "1",
                         "--vocab_file", str(FIXTURES / "vocab_full.txt")], "holds training checkpoints"),
    }
    if HAS_FINETUNE:
        commands["finetune"] = (["finetune", "mrpc", "--data_dir", str(DATA / "mrpc" / "glue"), "--init_checkpoint",
                                 str(fixture_model), "--output_dir", str(run_dir), "--max_seq_length", "32",
                                 "--num_train_epochs", "0.01"], "another run")
    for name, (argv, words) in commands.items():
        capsys.readouterr()
        assert bertkit(argv) == 2, name
        line = one_line(capsys.readouterr().err.strip().splitlines()[-1])
        assert words in line and str(run_dir) in line, (name, line)
        assert snapshot(run_dir) == before, f"{name} changed {run_dir}"
    assert [p.name for p in list_checkpoints(run_dir)] == ["ckpt-00000003", "ckpt-00000004"]


def test_convert_overwrite_replaces_whole(fixture_model, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.txt").write_text("from before")
    assert bertkit(["convert", "-i", str(fixture_model), "-o", str(out)]) == 2
    assert bertkit(["convert", "-i", str(fixture_model), "-o", str(out), "--overwrite"]) == 0
    assert not (out / "stale.txt").exists()
    verify_folder(out)


def test_data_create_over_another_dataset(tmp_path, capsys):
    def create(*extra):
        return bertkit(["data", "create", str(FIXTURES / "sample_text.txt"), "-o", str(out), "--workers", "1",
                        "--max_seq_length", "64", "--vocab_file", str(FIXTURES / "vocab_full.txt"), *extra])

    out = tmp_path / "data"
    assert create("--dupe_factor", "2") == 0
    first = json.loads((out / "manifest.json").read_text())
    assert create("--dupe_factor", "2") == 0  # the same dataset again: found finished, kept
    assert json.loads((out / "manifest.json").read_text()) == first
    capsys.readouterr()
    assert create("--dupe_factor", "3") == 2  # other settings: refused, the dataset untouched
    line = one_line(capsys.readouterr().err)
    assert f"{out}: holds a dataset made from other inputs or settings; pass --overwrite" in line
    assert json.loads((out / "manifest.json").read_text()) == first
    assert create("--dupe_factor", "3", "--overwrite") == 0
    second = json.loads((out / "manifest.json").read_text())
    assert second["settings"]["dupe_factor"] == 3 and second["fingerprint"] != first["fingerprint"]


def test_pretrain_output_holding_another_run(run_dir, tmp_path, tmp_path_factory, capsys):
    """Covered in tests/test_pretrain.py for the flags; here: a damaged run of the same settings is
    resumed from its last good checkpoint, never restarted over it."""
    setup = tiny_setup(tmp_path_factory)
    out = tmp_path / "out"
    shutil.copytree(run_dir, out)
    (out / "ckpt-00000004" / "model.safetensors").write_bytes(b"")
    capsys.readouterr()
    assert bertkit(pretrain_args(setup, out, 4)) == 0
    assert f"resumed from {out / 'ckpt-00000003'}" in capsys.readouterr().err
    assert bertkit(pretrain_args(setup, out, 4, learning_rate=2e-3)) == 2
    assert "holds checkpoints of another run" in capsys.readouterr().err
