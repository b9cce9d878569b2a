"""MFU: the FLOP count of a pretraining step against torch's own FLOP counter, and the log's MFU
arithmetic against benchmarks/pretrain_throughput.py's for the same shape."""

import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bertkit.config import BertConfig
from bertkit.distributed import Dist, matmul_peak
from bertkit.model import BertForPreTraining, pretraining_flops
from bertkit.runlog import Meter
from bertkit.tasks.pretrain import batch_flops, drop_full_mask, pretraining_loss
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import pretrain_throughput as bench  # noqa: E402

CONFIG = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                    intermediate_size=256, max_position_embeddings=128)


def test_flop_count_is_what_torch_counts_in_a_training_step():
    """Forward and backward of bertkit's model in training mode, counted by torch's FlopCounterMode
    (every matrix product, at the shapes the model really runs: the last layer at [CLS] and the
    masked rows only), against the formula both the log and the benchmark use."""
    torch.manual_seed(0)
    model = BertForPreTraining(CONFIG).train()
    B, T, P = 4, 64, 10
    b = drop_full_mask(bench.batch(B, T, P, CONFIG.vocab_size))
    with FlopCounterMode(display=False) as counter:
        loss, _ = pretraining_loss(model, b)
        loss.backward()
    assert counter.get_total_flops() == pytest.approx(B * pretraining_flops(CONFIG, T, P), rel=0.01)
    # per sequence at its own length: a batch with padding counts its real tokens only
    b = bench.batch(B, T, P, CONFIG.vocab_size)
    b["input_mask"][0, 40:] = 0
    assert batch_flops(CONFIG, b) == pytest.approx(
        3 * pretraining_flops(CONFIG, T, P) + pretraining_flops(CONFIG, 40, P))


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def train_s(self):
        return self.now


def test_log_mfu_equals_the_benchmarks_for_the_same_shape():
    """Steps of known duration through the log's meter give the MFU that the benchmark computes
    from the same throughput (its formula: sequences/s x FLOPs per sequence / peak)."""
    B, T, P, step_s, peak = 32, 128, 20, 0.8, 2.5e12
    cfg = BertConfig(vocab_size=30522, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=1024)  # mini
    clock = FakeClock()
    meter = Meter(clock, lambda batch: batch_flops(cfg, batch), peak)
    b = drop_full_mask(bench.batch(B, T, P, cfg.vocab_size))
    for _ in range(3):
        meter.count(b, world_size=1)
        meter.add(1.0, {})
    clock.now += 3 * step_s
    rec = meter.record(3, 1e-3, Dist(), None, 0)
    benchmark_mfu = (B / step_s) * pretraining_flops(cfg, T, P) / peak  # compare()'s "mfu"
    assert rec["seq_per_s"] == pytest.approx(B / step_s)
    assert rec["mfu"] == pytest.approx(benchmark_mfu, abs=1e-4)
    assert 0.01 < rec["mfu"] < 1  # a plausible number for these figures, not a unit slip
    # two ranks: twice the sequences on twice the devices, the same share of the hardware
    meter.count(b, world_size=2)
    meter.add(1.0, {})
    clock.now += step_s
    assert meter.record(4, 1e-3, Dist(world_size=2), None, 0)["mfu"] == pytest.approx(benchmark_mfu, abs=1e-4)


def test_matmul_peak_is_a_rate_and_quick():
    import time

    t = time.perf_counter()
    peak = matmul_peak(torch.device("cpu"), "fp32", seconds=0.3)
    assert time.perf_counter() - t < 5
    assert 1e8 < peak < 1e14  # FLOP/s of one or two CPU threads, neither a time nor a count
