"""Checkpoints named the TensorFlow way, wherever a command takes one: Google's checkpoint prefix
(`.../bert_model.ckpt`) and Estimator's `model.ckpt-N` for step N of a bertkit output folder, with
or without the `.index` / `.data-00000-of-00001` that a shell completes. Both mean exactly the
checkpoint that the folder/zip name or `ckpt-0000000N` means."""

import zipfile

import pytest
import torch
from safetensors.torch import load_file

from bertkit.cli import main as cli_main
from bertkit.tasks.common import initial_weights
from conftest import DATA, FIXTURES

GOOGLE_ZIP = FIXTURES / "uncased_L-2_H-128_A-2.zip"


@pytest.fixture(scope="module")
def unzipped(tmp_path_factory):
    root = tmp_path_factory.mktemp("google")
    zipfile.ZipFile(GOOGLE_ZIP).extractall(root)
    return root / "uncased_L-2_H-128_A-2"


def finetune_weights(init: str, out, data_dir) -> dict[str, torch.Tensor]:
    assert cli_main(["finetune", "mrpc", "--data_dir", str(data_dir), "--init_checkpoint", init,
                     "--output_dir", str(out), "--train_batch_size", "8", "--num_train_epochs", "1",
                     "--learning_rate", "1e-3", "--max_seq_length", "64", "--device", "cpu"]) == 0
    (ckpt,) = out.glob("ckpt-*")
    return load_file(ckpt / "model.safetensors")


def test_finetuning_from_a_prefix_equals_the_folder_and_the_zip(unzipped, tmp_path):
    data = tmp_path / "mrpc"
    data.mkdir()
    lines = (DATA / "mrpc" / "glue" / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    (data / "train.tsv").write_text("".join(lines[:17]), encoding="utf-8")  # 16 pairs: 2 steps
    runs = {name: finetune_weights(str(init), tmp_path / name, data) for name, init in (
        ("zip", GOOGLE_ZIP), ("folder", unzipped), ("prefix", unzipped / "bert_model.ckpt"),
        ("index", unzipped / "bert_model.ckpt.index"))}
    for name in ("folder", "prefix", "index"):
        assert runs[name].keys() == runs["zip"].keys()
        for k, v in runs["zip"].items():
            assert torch.equal(runs[name][k], v), (name, k)  # bit-identical


@pytest.fixture(scope="module")
def phase_1(tmp_path_factory, unzipped):
    """Two steps of pretraining from the Google fixture, a checkpoint after each."""
    out = tmp_path_factory.mktemp("pretraining") / "phase_1"
    assert cli_main(["pretrain", "--input_files_dir", str(FIXTURES / "pretrain_seq128.tfrecord"),
                     "--init_checkpoint", str(unzipped), "--output_dir", str(out), "--train_batch_size", "2",
                     "--max_seq_length", "128", "--max_predictions_per_seq", "20", "--num_train_steps", "2",
                     "--num_warmup_steps", "1", "--learning_rate", "1e-2", "--save_checkpoints_steps", "1",
                     "--keep_checkpoints", "0", "--device", "cpu"]) == 0
    return out


@pytest.mark.parametrize("suffix", ["", ".index", ".data-00000-of-00001"])
def test_model_ckpt_n_is_the_step_n_checkpoint(phase_1, suffix):
    _, want, _, _ = initial_weights(str(phase_1 / "ckpt-00000001"), True)
    _, got, _, _ = initial_weights(str(phase_1 / f"model.ckpt-1{suffix}"), True)
    _, last, _, _ = initial_weights(str(phase_1 / "ckpt-00000002"), True)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not all(torch.equal(last[k], want[k]) for k in want)  # step 1, not the newest


def test_phase_2_from_model_ckpt_n_starts_from_the_same_weights(phase_1, capsys):
    """The seed's phase 2 line, --init_checkpoint=.../phase_1/model.ckpt-N, trains exactly as from
    phase_1/ckpt-0000000N."""
    runs = {}
    for name in ("model.ckpt-2", "ckpt-00000002"):
        out = phase_1.parent / f"phase_2_from_{name}"
        assert cli_main(["pretrain", "--input_files_dir", str(FIXTURES / "pretrain_seq512.tfrecord"),
                         "--init_checkpoint", str(phase_1 / name), "--output_dir", str(out),
                         "--train_batch_size", "1", "--max_seq_length", "512", "--max_predictions_per_seq", "80",
                         "--num_train_steps", "1", "--num_warmup_steps", "0", "--learning_rate", "1e-3",
                         "--device", "cpu"]) == 0
        runs[name] = load_file(out / "ckpt-00000001" / "model.safetensors")
    a, b = runs.values()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_names_are_one_line_errors(phase_1, unzipped, tmp_path, capsys):
    # a prefix whose .index is missing
    (tmp_path / "bert_model.ckpt.data-00000-of-00001").write_bytes(b"x")
    cases = [
        (["convert", "--input", str(tmp_path / "bert_model.ckpt"), "--output", str(tmp_path / "o")],
         f"{tmp_path / 'bert_model.ckpt'}: a TensorFlow checkpoint prefix without its index "
         f"({tmp_path / 'bert_model.ckpt'}.index is missing)"),
        (["convert", "--input", str(unzipped / "model.ckpt"), "--output", str(tmp_path / "o")],
         f"{unzipped / 'model.ckpt'}: no such checkpoint folder or zip, nor a TensorFlow checkpoint prefix "
         "(model.ckpt.index is not there)"),
        # a step that was never saved: the steps that were are listed
        (["convert", "--input", str(phase_1 / "model.ckpt-100"), "--output", str(tmp_path / "o")],
         f"{phase_1 / 'model.ckpt-100'}: no checkpoint of step 100 in {phase_1} (steps saved there: 1, 2)"),
        (["demo", "-c", "finetuning", "-d", "fp32", "-m", "tiny", "-t", "mrpc", "--dry_run",
          "--checkpoint_folder", str(phase_1 / "model.ckpt-7.index")],
         f"--checkpoint_folder {phase_1 / 'model.ckpt-7.index'}: no checkpoint of step 7"),
        (["demo", "-c", "pretraining", "-d", "fp32", "-m", "tiny", "-t", "overfit", "--dry_run",
          "--init_checkpoint_path", str(tmp_path / "bert_model.ckpt")], "--init_checkpoint_path"),
    ]
    for argv, message in cases:
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "o").exists()
    # the forms that exist are taken by every command
    assert cli_main(["convert", "--input", str(phase_1 / "model.ckpt-2.index"), "--output", str(tmp_path / "o")]) == 0
    assert cli_main(["convert", "--input", str(unzipped / "bert_model.ckpt"), "--output", str(tmp_path / "g")]) == 0
