"""A disk that fills up while shards or checkpoints are written (a small tmpfs, mounted as root):
one clear line naming the path, nothing partial that a later run would take as complete, the last
good checkpoint intact, and a later run with space finishes the work."""

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import bertkit.io as bertkit_io
from bertkit import BertkitError
from bertkit.checkpoint import latest_checkpoint, list_checkpoints, verify_folder
from bertkit.cli import main as bertkit
from bertkit.data.shards import read_manifest, verify_dataset
from conftest import FIXTURES
from tiny import pretrain_args, tiny_setup


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A tmpfs of `size` at `path`; skipped with the reason where mounting is not permitted."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    path.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def grow(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def leftovers(folder: Path) -> list[str]:
    """Temporary files of interrupted atomic writes."""
    return [str(p) for p in folder.rglob(".*.tmp")]


def last_line(err: str) -> str:
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def create(out: Path, dupe_factor: int) -> list[str]:
    return ["data", "create", str(FIXTURES / "sample_text.txt"), "-o", str(out), "--max_seq_length", "64",
            "--max_predictions_per_seq", "10", "--dupe_factor", str(dupe_factor), "--workers", "1",
            "--vocab_file", str(FIXTURES / "vocab_full.txt")]


@pytest.mark.parametrize("dupe_factor, fails_at", [
    (40, "part-00000.bkshard"),  # a 100 KB shard on a 64 KB disk
    (5, "vocab.txt"),  # the 13 KB shard fits; the 230 KB vocab copied beside it does not
])
def test_data_create_on_a_full_disk(tmp_path, capsys, dupe_factor, fails_at):
    with tmpfs(tmp_path / "disk", "64k") as disk:
        out = disk / "data"
        assert bertkit(create(out, dupe_factor)) == 2
        line = last_line(capsys.readouterr().err)
        assert line.startswith("bertkit data: error: ") and f"{out / fails_at}: no space left on device" in line
        with pytest.raises(BertkitError, match="no manifest.json"):
            read_manifest(out)  # never a dataset whose manifest points at a partial shard
        assert not leftovers(disk)
        grow(disk, "1m")
        assert bertkit(create(out, dupe_factor)) == 0
        assert verify_dataset(out) == [] and read_manifest(out)["instances"] > 0


@pytest.mark.parametrize("size, writing", [
    # a checkpoint is ~1.5 MB (0.5 MB of weights, 1.0 of optimizer state): the second one's weights do not fit
    ("1800k", "model.safetensors"),
    ("2500k", "optimizer.pt"),  # its weights fit, its optimizer state does not
])
def test_pretrain_fills_the_disk(tmp_path_factory, tmp_path, capsys, monkeypatch, size, writing):
    # Which library met the full disk: safetensors says so in its message only, torch.save in the
    # OSError its RuntimeError was raised from. Both must be recognised.
    seen = []
    real = bertkit_io.is_disk_full
    monkeypatch.setattr(bertkit_io, "is_disk_full", lambda e: seen.append(type(e).__name__) or real(e))
    setup = tiny_setup(tmp_path_factory)
    with tmpfs(tmp_path / "disk", size) as disk:
        out = disk / "run"
        assert bertkit(pretrain_args(setup, out, 8)) == 2
        assert seen[0] == {"model.safetensors": "SafetensorError", "optimizer.pt": "RuntimeError"}[writing]
        line = last_line(capsys.readouterr().err)
        assert line == (f"bertkit pretrain: error: {out / 'ckpt-00000006'}: no space left on device while writing "
                        "it; nothing was written (free some space or choose another folder)")
        assert [p.name for p in list_checkpoints(out)] == ["ckpt-00000003"]
        verify_folder(out / "ckpt-00000003")  # the last good checkpoint is whole
        assert not leftovers(disk)
        grow(disk, "64m")
        assert bertkit(pretrain_args(setup, out, 8)) == 0
        assert f"resumed from {out / 'ckpt-00000003'}" in capsys.readouterr().err
        assert latest_checkpoint(out).name == "ckpt-00000008"


def test_log_write_on_a_full_disk_is_one_line(tmp_path_factory, tmp_path, capsys):
    """The JSON log, not a checkpoint, meets the full disk: still one line naming where."""
    setup = tiny_setup(tmp_path_factory)
    with tmpfs(tmp_path / "disk", "64k") as disk:
        (disk / "filler").write_bytes(b"\0" * (64 * 1024 - 4096))  # one 4 KB page left: run.json takes it
        out = disk / "run"
        code = bertkit(pretrain_args(setup, out, 2, save_checkpoints_steps=100))
        line = last_line(capsys.readouterr().err)
        assert code == 2 and line == (f"bertkit pretrain: error: {out / 'log.jsonl'}: no space left on device "
                                      "(free some space or choose another folder)"), line
        assert not list_checkpoints(out) and not leftovers(disk)
