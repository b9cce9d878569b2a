"""A process killed while it writes a checkpoint: at every point, the newest complete checkpoint is
what the next run resumes from, nothing half-written is taken for a checkpoint, and the resumed run
ends bit for bit where an undisturbed run ends. Damaged checkpoints are passed over with a warning."""

import shutil

import pytest

from bertkit.checkpoint import latest_checkpoint, list_checkpoints, verify_folder
from bertkit.cli import main as bertkit
from tiny import one_thread, pretrain_args, same_run, spawn, tiny_setup  # noqa: F401 - fixtures

STEPS = 8  # checkpoints at steps 3, 6 and 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    """An undisturbed run to step 8, on one thread like the spawned ones."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("reference") / "out"
    try:
        assert bertkit(pretrain_args(setup, out, STEPS)) == 0
    finally:
        torch.set_num_threads(before)
    assert [p.name for p in list_checkpoints(out)] == ["ckpt-00000003", "ckpt-00000006", "ckpt-00000008"]
    return out


# fault -> (extra flags, checkpoints listed after the crash, the one a resume must take)
CRASHES = {
    # the step-6 folder is complete under its temporary name; the rename never happens
    "before_rename:ckpt-00000006": ({}, ["ckpt-00000003"], "ckpt-00000003"),
    # renamed into place, but the process dies before it cleans up the temporary folder
    "after_rename:ckpt-00000006": ({}, ["ckpt-00000003", "ckpt-00000006"], "ckpt-00000006"),
    # the second checkpoint's weights file is half written (power cut mid-write)
    "half_weights:2": ({}, ["ckpt-00000003"], "ckpt-00000003"),
    # the second checkpoint's optimizer state is half written
    "half_optimizer:2": ({}, ["ckpt-00000003"], "ckpt-00000003"),
    # keep 2: after step 8 is saved, step 3 is being deleted when the process dies
    "during_prune:ckpt-00000003": ({"keep_checkpoints": 2}, ["ckpt-00000003", "ckpt-00000006", "ckpt-00000008"],
                                   "ckpt-00000008"),
}


def test_killed_while_writing_a_checkpoint_resumes_exactly(setup, reference, tmp_path, one_thread, capsys):
    # All crashes at once (one thread each): the machine has 2 cores, and they take a few seconds.
    procs = {}
    for fault, (extra, _, _) in CRASHES.items():
        out = tmp_path / fault.replace(":", "_")
        procs[fault] = (out, spawn(pretrain_args(setup, out, STEPS, **extra), fault))
    for fault, (out, p) in procs.items():
        _, err = p.communicate(timeout=300)
        assert p.returncode == 9, f"{fault}: the fault did not fire\n{err}"

    for fault, (extra, listed, resume_from) in CRASHES.items():
        out = procs[fault][0]
        assert [p.name for p in list_checkpoints(out)] == listed, fault
        temporary = sorted(out.glob(".ckpt-*.tmp"))
        if fault.startswith(("before_rename", "after_rename", "half_")):
            assert temporary, f"{fault}: expected the temporary folder of the interrupted write"
        if fault.startswith("before_rename"):
            # complete, checksums and all, yet never taken: only a renamed folder is a checkpoint
            verify_folder(temporary[0] / "ckpt-00000006")
        if fault.startswith("during_prune"):
            with pytest.raises(Exception, match="missing|not a bertkit model folder"):
                verify_folder(out / "ckpt-00000003")
        assert latest_checkpoint(out, log=lambda m: None).name == resume_from, fault

        capsys.readouterr()
        assert bertkit(pretrain_args(setup, out, STEPS, **extra)) == 0, fault
        assert f"resumed from {out / resume_from}" in capsys.readouterr().err, fault
        assert not list(out.glob(".ckpt-*.tmp")), f"{fault}: the interrupted write's leftovers remain"
        same_run(reference / "ckpt-00000008", out / "ckpt-00000008")


@pytest.mark.parametrize("damage, falls_back_to", [
    ({"ckpt-00000008/model.safetensors": "truncate"}, "ckpt-00000006"),
    ({"ckpt-00000008/optimizer.pt": "flip", "ckpt-00000006/bert_config.json": "flip"}, "ckpt-00000003"),
    ({"ckpt-00000008/bertkit.json": "delete"}, "ckpt-00000006"),
])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(setup, reference, tmp_path, one_thread, capsys,
                                                               damage, falls_back_to):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    for name, how in damage.items():
        path = out / name
        data = bytearray(path.read_bytes())
        if how == "truncate":
            path.write_bytes(data[: len(data) // 2])
        elif how == "flip":
            data[len(data) // 2] ^= 0x01
            path.write_bytes(data)
        else:
            path.unlink()
    assert bertkit(pretrain_args(setup, out, STEPS)) == 0
    err = capsys.readouterr().err
    for name in damage:
        folder = name.split("/")[0]
        assert f"warning: skipping damaged checkpoint: {out / folder}" in err, err
    assert f"resumed from {out / falls_back_to}" in err
    same_run(reference / "ckpt-00000008", out / "ckpt-00000008")  # rewritten whole, as it was
