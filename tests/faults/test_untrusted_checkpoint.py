"""Checkpoints from strangers or from a damaged disk: a corrupt one is refused with one line naming
the file and what is wrong, by every command that reads one; a pickle that would run code on load is
refused, and the test proves its code never ran."""

import importlib.util
import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from bertkit.checkpoint import META
from bertkit.io import file_digest as sha256_file
from bertkit.cli import main as bertkit
from conftest import DATA, FIXTURES
from tiny import one_line, pretrain_args, tiny_setup

HAS_FINETUNE = importlib.util.find_spec("bertkit.tasks.finetune.mrpc") is not None


class Payload:
    """Pickles to a call of exec(): whoever unpickles it with plain pickle runs the code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('the payload ran')",)


def rehash(folder: Path, *names: str) -> None:
    """Rewrite bertkit.json's sha256 of `names`, as an attacker (or a buggy tool) would."""
    meta = json.loads((folder / META).read_text())
    for name in names:
        meta["sha256"][name] = sha256_file(folder / name)
    (folder / META).write_text(json.dumps(meta))


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def flip(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.fixture(scope="module")
def google_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("google")
    with zipfile.ZipFile(FIXTURES / "uncased_L-2_H-128_A-2.zip") as z:
        z.extractall(root)
    return root / "uncased_L-2_H-128_A-2"


def bertkit_case(folder: Path, how: str) -> str:
    """Damage a bertkit model folder; return the file and the words the error must hold."""
    weights, config, vocab = folder / "model.safetensors", folder / "bert_config.json", folder / "vocab.txt"
    if how == "truncated":
        truncate(weights)
        return f"{weights}: sha256 does not match"
    if how == "flipped byte":
        flip(weights)
        return f"{weights}: sha256 does not match"
    if how == "truncated, checksum rewritten":
        truncate(weights)
        rehash(folder, "model.safetensors")
        return f"{weights}: unreadable safetensors file"
    if how == "config of another shape":
        edit_json(config, hidden_size=64, intermediate_size=256)
        rehash(folder, "bert_config.json")
        return f"{weights}: bert.embeddings.word.weight has shape (2000, 128), but {config} implies (2000, 64)"
    if how == "config of another vocab size":
        edit_json(config, vocab_size=3000)
        rehash(folder, "bert_config.json")
        return f"{weights}: bert.embeddings.word.weight has shape (2000, 128), but {config} implies (3000, 128)"
    if how == "config of another vocab size, checksum kept":
        edit_json(config, vocab_size=3000)
        return f"{config}: sha256 does not match"
    if how == "vocab longer than the model's":
        with vocab.open("a") as f:
            f.write("extratoken\n")
        rehash(folder, "vocab.txt")
        return f"{vocab}: 2001 tokens, more than the config's vocab_size 2000"
    raise AssertionError(how)


BERTKIT_CASES = ["truncated", "flipped byte", "truncated, checksum rewritten", "config of another shape",
                 "config of another vocab size", "config of another vocab size, checksum kept",
                 "vocab longer than the model's"]


def foreign_case(google_dir: Path, tmp: Path, how: str) -> tuple[Path, str]:
    """A damaged Google or Hugging Face folder, and the words its error must hold."""
    if how.startswith("google"):
        folder = tmp / "google"
        shutil.copytree(google_dir, folder)
        index, data = folder / "bert_model.ckpt.index", folder / "bert_model.ckpt.data-00000-of-00001"
        if how == "google: config of another vocab size":
            edit_json(folder / "bert_config.json", vocab_size=3000)
            return folder, (f"{index}: bert.embeddings.word.weight has shape (2000, 128), "
                            f"but {folder / 'bert_config.json'}")
        if how == "google: flipped byte in the data":
            flip(data, 0.3)
            return folder, f"{index}: tensor "
        if how == "google: truncated data":
            truncate(data)
            return folder, f"{index}: tensor "
        if how == "google: truncated index":
            truncate(index)
            return folder, f"{index}: "
    folder = tmp / "hf"
    shutil.copytree(FIXTURES / "reference_hf", folder)
    shutil.copy(google_dir / "vocab.txt", folder / "vocab.txt")
    if how == "hf: config of another shape":
        edit_json(folder / "config.json", hidden_size=256, num_attention_heads=2)
        return folder, f"{folder / 'model.safetensors'}: bert.embeddings.word.weight has shape (2000, 128)"
    if how == "hf: truncated weights":
        truncate(folder / "model.safetensors")
        return folder, f"{folder / 'model.safetensors'}: unreadable safetensors file"
    raise AssertionError(how)


FOREIGN_CASES = ["google: config of another vocab size", "google: flipped byte in the data", "google: truncated data",
                 "google: truncated index", "hf: config of another shape", "hf: truncated weights"]


def commands(src: Path, tmp: Path) -> dict[str, list[str]]:
    """Every command that reads a checkpoint given by the user."""
    out = {"convert": ["convert", "-i", str(src), "-o", str(tmp / "converted")],
           "pretrain": ["pretrain", "--init_checkpoint", str(src), "--input_files_dir",
                        str(FIXTURES / "pretrain_seq128.tfrecord"), "--output_dir", str(tmp / "pretrained"),
                        "--num_train_steps", "1", "--num_warmup_steps", "0"]}
    if HAS_FINETUNE:
        out["finetune"] = ["finetune", "mrpc", "--data_dir", str(DATA / "mrpc" / "glue"), "--init_checkpoint",
                           str(src), "--output_dir", str(tmp / "finetuned"), "--do_train", "--num_train_epochs", "1"]
    return out


def assert_refused(src: Path, expected: str, tmp: Path, capsys) -> None:
    for name, argv in commands(src, tmp).items():
        capsys.readouterr()
        assert bertkit(argv) == 2, name
        line = one_line(capsys.readouterr().err)
        assert expected in line, f"{name}: {line}"
        assert not any((tmp / d).exists() and any((tmp / d).glob("ckpt-*"))
                       for d in ("pretrained", "finetuned")), name
        assert not (tmp / "converted").exists(), name


@pytest.mark.parametrize("how", BERTKIT_CASES)
def test_corrupt_bertkit_folder_is_refused(fixture_model, tmp_path, capsys, how):
    folder = tmp_path / "model"
    shutil.copytree(fixture_model, folder)
    expected = bertkit_case(folder, how)
    assert_refused(folder, expected, tmp_path, capsys)


@pytest.mark.parametrize("how", FOREIGN_CASES)
def test_corrupt_google_and_hf_folders_are_refused(google_dir, tmp_path, capsys, how):
    folder, expected = foreign_case(google_dir, tmp_path, how)
    assert_refused(folder, expected, tmp_path, capsys)


def test_the_undamaged_sources_load(fixture_model, google_dir, tmp_path):
    """The control: the same folders, undamaged, convert."""
    hf = tmp_path / "hf"
    shutil.copytree(FIXTURES / "reference_hf", hf)
    shutil.copy(google_dir / "vocab.txt", hf / "vocab.txt")
    for i, src in enumerate((fixture_model, google_dir, hf)):
        assert bertkit(["convert", "-i", str(src), "-o", str(tmp_path / f"out{i}")]) == 0, src


# ---- pickles that would run code -----------------------------------------------------------------

def test_payload_is_live(tmp_path):
    """The control: unpickled without weights_only, the crafted file does run its code."""
    marker = tmp_path / "ran"
    torch.save({"x": Payload(marker)}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.read_text() == "the payload ran"


def test_pickled_hf_weights_never_run(fixture_model, google_dir, tmp_path, capsys):
    folder = tmp_path / "hf"
    shutil.copytree(FIXTURES / "reference_hf", folder)
    shutil.copy(google_dir / "vocab.txt", folder / "vocab.txt")
    from safetensors.torch import load_file

    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "ran"
    torch.save({**state, "bert.pooler.dense.weight": Payload(marker)}, folder / "pytorch_model.bin")
    assert_refused(folder, f"{folder / 'pytorch_model.bin'}: refused to load", tmp_path, capsys)
    assert not marker.exists()
    torch.save(state, folder / "pytorch_model.bin")  # the same weights as plain tensors do load
    assert bertkit(["convert", "-i", str(folder), "-o", str(tmp_path / "ok")]) == 0


@pytest.fixture
def trained(tmp_path_factory, tmp_path):
    """A tiny run to step 6: checkpoints at steps 3 and 6."""
    setup = tiny_setup(tmp_path_factory)
    out = tmp_path / "run"
    assert bertkit(pretrain_args(setup, out, 6)) == 0
    return setup, out


def test_pickled_optimizer_state_never_runs(trained, tmp_path, capsys):
    setup, out = trained
    marker = tmp_path / "ran"
    evil = {"state": {}, "param_groups": [], "payload": Payload(marker)}
    torch.save(evil, out / "ckpt-00000006" / "optimizer.pt")
    # As tampered: its checksum fails, so resuming passes over it to step 3 and redoes steps 4-6.
    capsys.readouterr()
    assert bertkit(pretrain_args(setup, out, 6)) == 0
    err = capsys.readouterr().err
    assert f"{out / 'ckpt-00000006' / 'optimizer.pt'}: sha256 does not match" in err
    assert f"resumed from {out / 'ckpt-00000003'}" in err
    assert not marker.exists()

    # With bertkit.json's checksum rewritten to match: unpickling refuses the call to exec.
    torch.save(evil, out / "ckpt-00000006" / "optimizer.pt")
    rehash(out / "ckpt-00000006", "optimizer.pt")
    assert bertkit(pretrain_args(setup, out, 8)) == 2
    line = one_line(capsys.readouterr().err)
    assert f"{out / 'ckpt-00000006' / 'optimizer.pt'}: refused to load (Unsupported global: GLOBAL exec" in line, line
    assert not marker.exists()
