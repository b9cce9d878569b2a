"""The training loop: exact resume, the data stream, non-finite losses, the bf16 fp32-module list."""

import json
import math
import threading
import time

import pytest
import torch

from bertkit import BertkitError
from bertkit.checkpoint import OPTIMIZER, list_checkpoints, load_training
from bertkit.distributed import Dist
from bertkit.model import BertForPreTraining
from bertkit.optim import WarmupPolyDecay, make_optimizer
from bertkit.stream import Stream
from bertkit.tasks.pretrain import pretraining_loss
from bertkit.runlog import RunLog
from bertkit.train import CheckpointManager, LoopConfig, fit, keep_fp32
from conftest import VOCAB
from synthetic import CONFIG, Instances, collate


def train(tmp_path, steps, resume=None, data=None, loss_fn=pretraining_loss, **loop):
    torch.manual_seed(0)
    model = BertForPreTraining(CONFIG)
    opt = make_optimizer("lamb", model, lr=1e-2)
    start = 0
    if resume is not None:
        _, state, opt_state, trainer = load_training(resume)
        model.load_state_dict(state)
        opt.load_state_dict(opt_state)
        start = trainer["step"]
    stream = Stream(data or Instances(), 8, collate, seed=1)
    cfg = LoopConfig(total_steps=steps, lr=1e-2, schedule=WarmupPolyDecay(2, 10), **{"log_every": 2, **loop})
    ckpt = CheckpointManager(tmp_path, CONFIG, VOCAB, every=3, keep=0)
    result = fit(model, opt, loss_fn, stream, cfg, Dist(), RunLog(tmp_path / "log.jsonl", True, steps, start),
                 ckpt, start)
    return model, opt, result


def test_resume_is_bit_identical(tmp_path):
    straight, opt1, _ = train(tmp_path / "a", 10)
    train(tmp_path / "b", 6)  # stops after its step-6 checkpoint
    resumed, opt2, _ = train(tmp_path / "b", 10, resume=tmp_path / "b" / "ckpt-00000006")
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    s1, s2 = opt1.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[k]["exp_avg_sq"], s2[k]["exp_avg_sq"]) for k in s1)
    # and training did change the weights
    assert not torch.equal(straight.state_dict()["bert.layers.0.query.weight"],
                           BertForPreTraining(CONFIG).state_dict()["bert.layers.0.query.weight"])


def test_checkpoints_and_log(tmp_path):
    train(tmp_path, 7)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000003", "ckpt-00000006", "ckpt-00000007"]
    assert (tmp_path / "ckpt-00000007" / OPTIMIZER).is_file()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6, 7]
    for key in ("loss", "mlm_acc", "nsp_acc", "lr", "grad_norm", "seq_per_s", "tokens_per_s"):
        assert all(math.isfinite(r[key]) for r in records), key
    assert records[0]["lr"] == pytest.approx(1e-2 * 1 / 2)  # step index 1 of a 2-step warmup


def test_stream_is_split_invariant():
    """The same global batch gives the same samples split over ranks or over micro-steps."""
    data = Instances(n=20)
    one = Stream(data, 4, lambda s: s, seed=3, prefetch=0)
    two = [Stream(data, 4, lambda s: s, seed=3, rank=r, world_size=2, prefetch=0) for r in range(2)]
    for u in range(12):  # crosses epoch boundaries (20 samples, 8 per global micro-step)
        assert one.indices(2 * u) + one.indices(2 * u + 1) == two[0].indices(u) + two[1].indices(u)
    # every sample once per epoch
    first_epoch = [i for u in range(5) for e, i in one.indices(u) if e == 0]
    assert sorted(first_epoch) == list(range(20))


def test_prefetched_stream_matches_direct():
    data = Instances(n=30)
    s = Stream(data, 4, collate, seed=5, prefetch=3)
    it = s.iterate(start=7)
    for u in range(7, 12):
        got, want = next(it), s.batch(u)
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_closing_the_stream_joins_its_thread():
    """The prefetch thread ends with the iterator: a thread left inside torch when the
    interpreter exits can abort the process."""
    s = Stream(Instances(n=30), 4, collate, seed=5, prefetch=2)
    it = s.iterate()
    next(it)
    time.sleep(0.2)  # let the worker fill the queue and block on it
    assert any(t.name == "bertkit-prefetch" for t in threading.enumerate())
    it.close()
    assert not any(t.name == "bertkit-prefetch" for t in threading.enumerate())


def test_nonfinite_loss_stops_and_names_the_step(tmp_path):
    calls = {"n": 0}

    def nan_at_step_4(model, batch):
        loss, metrics = pretraining_loss(model, batch)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 4 else loss), metrics

    with pytest.raises(BertkitError, match="non-finite loss .* at step 4"):
        train(tmp_path, 8, loss_fn=nan_at_step_4)
    # the step-3 checkpoint is the last one; nothing from after the NaN was written
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000003"]
    calls["n"] = 0
    model, _, result = train(tmp_path / "skip", 8, loss_fn=nan_at_step_4, skip_nonfinite=True)
    assert result["skipped_steps"] == 1
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_fp32_modules_run_outside_autocast():
    model = BertForPreTraining(CONFIG)
    names = keep_fp32(model, ("bert.layers.*.attn_norm", "mlm"), "cpu")
    assert names == ["bert.layers.0.attn_norm", "bert.layers.1.attn_norm", "mlm"]
    seen = {}
    for key, module in (("mlm", model.mlm.norm), ("up", model.bert.layers[0].up)):
        module.register_forward_hook(lambda m, i, o, key=key: seen.update({key: o.dtype}))
    b = collate([Instances()[i] for i in range(2)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mlm, _ = model(b["input_ids"], b["segment_ids"], b["input_mask"], b["masked_lm_positions"])
    assert seen["up"] == torch.bfloat16 and mlm.dtype == torch.float32 and seen["mlm"] == torch.float32
    with pytest.raises(BertkitError, match="matches no module"):
        keep_fp32(model, ("bert.nothing.*",), "cpu")
