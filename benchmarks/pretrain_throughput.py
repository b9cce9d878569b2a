"""Pretraining throughput: bertkit's step against Hugging Face transformers' BertForPreTraining.

Both train the same config on the same batch (forward, backward, optimizer step), alternated in one
process; warm-up steps are excluded and the median of repeated timings is reported. The same run
measures the peak of a large matrix product in each precision, and each model's achieved FLOP/s as a
share of it (MFU).

FLOPs per sequence (T tokens, P masked positions, L layers, H hidden, I intermediate, V vocab):
    forward  = (L-1) * (2*T*(4*H*H + 2*H*I) + 4*T*T*H)  # projections and feed-forward; QK^T and AV
             + 2*T*2*H*H + 2*R*(2*H*H + 2*H*I) + 4*R*T*H  # last layer: keys and values at all T,
                                                         #   the rest at the R = 1 + P rows read
             + 2*P*(H*H + H*V)                           # masked-LM transform and decoder, P positions
             + 2*H*H + 4*H                               # pooler and next-sentence head
    training = 3 * forward                               # backward costs twice the forward
Both models are credited with the same useful FLOPs (the peer also computes the last layer and the
vocabulary projection at positions no loss reads), so the MFU ratio equals the throughput ratio.

    python benchmarks/pretrain_throughput.py --variants tiny mini small base --precisions bf16 fp32 --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from bertkit.config import variant
from bertkit.model import BertForPreTraining
from bertkit.optim import make_optimizer


def batch(B: int, T: int, P: int, V: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(999, V, (B, T), generator=g)
    pos = torch.stack([torch.randperm(T - 2, generator=g)[:P].sort().values + 1 for _ in range(B)])  # (B, P)
    labels = ids.gather(1, pos)
    ids.scatter_(1, pos, 103)
    types = torch.zeros(B, T, dtype=torch.long)
    types[:, T // 2:] = 1
    return dict(input_ids=ids, segment_ids=types, input_mask=torch.ones(B, T, dtype=torch.long),
                masked_lm_positions=pos, masked_lm_ids=labels, masked_lm_weights=torch.ones(B, P),
                next_sentence_labels=torch.randint(0, 2, (B,), generator=g))


def flops_per_seq(cfg, T: int, P: int) -> float:
    L, H, I, V = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    R = 1 + P  # rows the heads read from the last layer: [CLS] and the masked positions
    layer = 2 * T * (4 * H * H + 2 * H * I) + 4 * T * T * H
    last = 2 * T * 2 * H * H + 2 * R * (2 * H * H + 2 * H * I) + 4 * R * T * H
    forward = (L - 1) * layer + last + 2 * P * (H * H + H * V) + 2 * H * H + 4 * H
    return 3 * forward


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


class Ours:
    name = "bertkit"

    def __init__(self, cfg, precision: str, optimizer: str):
        from bertkit.tasks.pretrain import pretraining_loss
        self.model = BertForPreTraining(cfg).train()
        self.opt = make_optimizer(optimizer, self.model, lr=1e-4)
        self.loss_fn = pretraining_loss
        self.precision = precision

    def step(self, b) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            loss, _ = self.loss_fn(self.model, b)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


class Peer:
    name = "transformers"

    def __init__(self, cfg, precision: str, optimizer: str):
        import transformers
        hf = transformers.BertConfig(**cfg.to_dict(), attn_implementation="sdpa")
        self.model = transformers.BertForPreTraining(hf).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, eps=1e-6, fused=True)
        self.precision = precision

    def step(self, b) -> None:
        labels = torch.full_like(b["input_ids"], -100).scatter_(1, b["masked_lm_positions"], b["masked_lm_ids"])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = self.model(input_ids=b["input_ids"], token_type_ids=b["segment_ids"],
                             attention_mask=b["input_mask"], labels=labels,
                             next_sentence_label=b["next_sentence_labels"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def time_steps(impl, b, steps: int) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        impl.step(b)
    return (time.perf_counter() - t) / steps


def compare(name: str, precision: str, B: int, T: int, P: int, repeats: int, steps: int, warmup: int,
            optimizer: str, peak: float) -> dict:
    cfg = variant(name)
    b = batch(B, T, P, cfg.vocab_size)
    torch.manual_seed(0)
    impls = [Ours(cfg, precision, optimizer), Peer(cfg, precision, optimizer)]
    for impl in impls:
        for _ in range(warmup):
            impl.step(b)
    times: dict[str, list[float]] = {impl.name: [] for impl in impls}
    for r in range(repeats):
        for impl in impls if r % 2 == 0 else impls[::-1]:  # alternate, so drift hits both alike
            times[impl.name].append(time_steps(impl, b, steps))
    ours, peer = (B / statistics.median(times[n]) for n in ("bertkit", "transformers"))
    flops = flops_per_seq(cfg, T, P)
    return {"variant": name, "precision": precision, "batch": B, "seq": T, "masked": P,
            "ours_seq_per_s": round(ours, 2), "peer_seq_per_s": round(peer, 2), "ratio": round(ours / peer, 2),
            "mfu": round(ours * flops / peak, 4), "peer_mfu": round(peer * flops / peak, 4),
            "ours_step_s": [round(t, 4) for t in times["bertkit"]],
            "peer_step_s": [round(t, 4) for t in times["transformers"]]}


def peak_rss(impl: str, name: str, precision: str, B: int, T: int, P: int, optimizer: str) -> float:
    """Peak resident memory (MB) of a fresh process running a few steps of one implementation."""
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child of
    # this (large) process would report the parent's peak.
    code = (f"import re, torch; from benchmarks.pretrain_throughput import *; cfg = variant({name!r}); "
            f"b = batch({B}, {T}, {P}, cfg.vocab_size); m = {impl}(cfg, {precision!r}, {optimizer!r}); "
            f"[m.step(b) for _ in range(3)]; "
            f"print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]) / 1024)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["tiny", "mini", "small", "base"])
    p.add_argument("--precisions", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--masked", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5, help="Timed rounds per implementation (median reported).")
    p.add_argument("--steps", type=int, default=3, help="Steps per timed round.")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "lamb"], help="Our optimizer (the peer uses AdamW).")
    p.add_argument("--memory", action="store_true", help="Also measure peak RSS of each, in fresh processes.")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", help="Write the records here.")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    peaks = {prec: matmul_peak(torch.bfloat16 if prec == "bf16" else torch.float32) for prec in args.precisions}
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          + ", ".join(f"{k} matmul peak {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items()))
    rows = []
    print(f"{'variant':8} {'prec':5} {'ours seq/s':>11} {'peer seq/s':>11} {'ratio':>6} {'MFU':>6}")
    for name in args.variants:
        for prec in args.precisions:
            r = compare(name, prec, args.batch, args.seq, args.masked, args.repeats, args.steps, args.warmup,
                        args.optimizer, peaks[prec])
            r["matmul_peak_gflops"] = round(peaks[prec] / 1e9, 1)
            if args.memory:
                r["ours_peak_rss_mb"] = peak_rss("Ours", name, prec, args.batch, args.seq, args.masked, args.optimizer)
                r["peer_peak_rss_mb"] = peak_rss("Peer", name, prec, args.batch, args.seq, args.masked, args.optimizer)
            rows.append(r)
            print(f"{name:8} {prec:5} {r['ours_seq_per_s']:11.2f} {r['peer_seq_per_s']:11.2f} {r['ratio']:6.2f} "
                  f"{r['mfu']:6.1%}", flush=True)
            gc.collect()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
