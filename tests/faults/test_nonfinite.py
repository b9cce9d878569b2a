"""`bertkit pretrain` meeting a NaN in its data, and fp16 loss scaling meeting an infinite gradient:
the run stops naming the step, or skips the step and counts it, and no bad weights reach a
checkpoint. (tests/test_train.py covers the loop alone; here the whole command runs.)"""

import json

import pytest
import torch
from safetensors.torch import load_file

import bertkit.tasks.pretrain as pretrain
from bertkit.checkpoint import list_checkpoints
from bertkit.cli import main as bertkit
from inject import fault_loss
from tiny import pretrain_args, tiny_setup


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory)


def weights(folder):
    return load_file(folder / "model.safetensors")


def all_finite(folder) -> bool:
    return all(torch.isfinite(t).all() for t in weights(folder).values())


def same_weights(a, b) -> bool:
    wa, wb = weights(a), weights(b)
    return all(torch.equal(wa[k], wb[k]) for k in wa)


def test_nan_in_a_batch_stops_the_run_naming_the_step(setup, tmp_path, monkeypatch, capsys):
    # micro-step 4's masked-LM weights are NaN: the batch as the data pipeline hands it over
    monkeypatch.setattr(pretrain, "pretraining_loss", fault_loss("nan_batch", "4", pretrain.pretraining_loss))
    out = tmp_path / "run"
    assert bertkit(pretrain_args(setup, out, 8)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "bertkit pretrain: error: non-finite loss (nan) at step 4; stopping without saving it "
        "(pass --skip_nonfinite to skip such steps)")
    assert [p.name for p in list_checkpoints(out)] == ["ckpt-00000003"]  # nothing after the NaN
    assert all_finite(out / "ckpt-00000003")


def test_nan_in_a_batch_is_skipped_and_counted(setup, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pretrain, "pretraining_loss", fault_loss("nan_batch", "4", pretrain.pretraining_loss))
    out = tmp_path / "run"
    assert bertkit(pretrain_args(setup, out, 6, save_checkpoints_steps=1, skip_nonfinite="true")) == 0
    assert "warning: non-finite loss at step 4: step skipped (1 so far)" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["skipped_steps"] == 1
    ckpts = list_checkpoints(out)
    assert len(ckpts) == 6 and all(all_finite(c) for c in ckpts)
    assert same_weights(out / "ckpt-00000003", out / "ckpt-00000004")  # step 4 changed nothing
    assert not same_weights(out / "ckpt-00000004", out / "ckpt-00000005")  # and training went on


def test_fp16_scaler_skips_an_infinite_gradient(setup, tmp_path, monkeypatch):
    """A finite loss whose gradients overflow (an fp16 overflow on demand, at micro-step 2): the
    GradScaler skips the update, halves its scale, and the run goes on to the end. (fp16 is slow on
    CPUs: four steps.)"""
    def run(out):
        assert bertkit(pretrain_args(setup, out, 4, save_checkpoints_steps=1, num_warmup_steps=0,
                                     precision="fp16")) == 0
        return json.loads((out / "ckpt-00000004" / "trainer.json").read_text())["grad_scaler"]

    clean = run(tmp_path / "clean")  # the control: without the overflow the scale stays put
    monkeypatch.setattr(pretrain, "pretraining_loss", fault_loss("inf_grad", "2", pretrain.pretraining_loss))
    out = tmp_path / "overflow"
    scaler = run(out)
    assert clean["scale"] == 65536.0 and scaler["scale"] == 32768.0
    ckpts = list_checkpoints(out)
    assert len(ckpts) == 4 and all(all_finite(c) for c in ckpts)
    assert same_weights(out / "ckpt-00000001", out / "ckpt-00000002")  # the overflowing step was skipped
    assert not same_weights(out / "ckpt-00000002", out / "ckpt-00000003")  # and training went on
    assert same_weights(tmp_path / "clean" / "ckpt-00000001", out / "ckpt-00000001")
