"""Is bertkit right on this GPU, and how fast is it? One call, a time budget, a JSON report.

Checks (each can fail; tolerances in gpu_checks.py):
  fixture         the TensorFlow-written fixture's outputs against transformers' reference outputs
  cpu_vs_device   BERT-large, batch 2: fp32 loss and gradients on the CPU and on the device
  bf16_grads      bf16 autocast gradients against fp32 on the device (cosine per tensor)
  lamb_step       one LAMB step from the same gradients on the CPU and on the device (the updates)
  padding         a padded batch against each sequence run alone
  attention       which attention kernel ran (profiler names), unpadded and padded
  resume          a checkpoint saved from the device, loaded, next step equal to the uninterrupted one
Measurements (bf16 on a GPU; a tiny model in fp32 on a CPU, where compilation is skipped):
  matmul          a bf16 8192^3 matrix product: the ceiling this card reaches in this call
  phase1_*/phase2_*  BERT-large pretraining steps (seq 128, 20 predictions; seq 512, 80), bertkit
                  against transformers' BertForPreTraining alternated, eager then torch.compile

Run from the repository root, after `bash benchmarks/gpu_carry.sh` (benchmarks/README.md):

    PYTHONPATH=src python3 benchmarks/gpu_check.py --out "$OUT"            # a GPU, about 8 minutes
    PYTHONPATH=src python3 benchmarks/gpu_check.py --device cpu --out /tmp/x  # tiny, about a minute

Before each part the time left is checked; a part that no longer fits is recorded as skipped. The
report ($OUT/gpu_report.json) is rewritten after every part; the exit status is 1 when a check
failed or a part broke, 0 otherwise.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import torch

from bertkit.config import resolve

import gpu_checks as checks
import gpu_speed as speed
from gpu_report import CARRY_DIR, Budget, Part, Report, failed, missing_carry, run_parts, table

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (cuda when visible, else cpu), cuda, cuda:N or cpu.")
    p.add_argument("--model", default=None, help="Variant or bert_config.json of the checks and measurements "
                   "(default: large on a GPU, tiny on a CPU).")
    p.add_argument("--resume_model", default=None, help="Model of the checkpoint check, which writes and reads "
                   "its files (default: base on a GPU, tiny on a CPU).")
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"), help="Folder of gpu_report.json (default: $OUT).")
    p.add_argument("--budget_s", type=float, default=480.0, help="Seconds for everything; parts that no longer fit are skipped.")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="Measure torch.compile too: auto = on a GPU only (on this project's CPU a compile takes minutes).")
    p.add_argument("--peer", choices=("auto", "off"), default="auto", help="Measure transformers alongside (auto: when installed).")
    p.add_argument("--phase1_batch", type=int, default=None, help="Default 64 on a GPU, 8 on a CPU.")
    p.add_argument("--phase2_batch", type=int, default=None, help="Default 32 on a GPU, 2 on a CPU.")
    p.add_argument("--repeats", type=int, default=None, help="Timed repeats per side (default 5 on a GPU, 2 on a CPU).")
    p.add_argument("--steps", type=int, default=None, help="Steps per timed repeat (default 5 on a GPU, 1 on a CPU).")
    p.add_argument("--peak_tflops", type=float, default=989.0,
                   help="Datasheet dense bf16 peak of the card, for MFU (H100 and H200 SXM: 989).")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    cfg = resolve(args.model or ("large" if gpu else "tiny"))
    resume_cfg = resolve(args.resume_model or ("base" if gpu else "tiny"))
    meta = {"device": torch.cuda.get_device_name(device) if gpu else platform.processor() or "cpu",
            "torch": torch.__version__, "python": platform.python_version(), "budget_s": args.budget_s,
            "model": f"{cfg.num_hidden_layers}L/{cfg.hidden_size}H", "argv": sys.argv[1:]}
    report = Report(Path(args.out) / "gpu_report.json", meta)
    print(f"gpu_check on {meta['device']}, torch {meta['torch']}; report: {report.path}", flush=True)

    missing = missing_carry(REPO)
    setup = checks.Setup(device=device, config=cfg, resume_config=resume_cfg)
    big = gpu and cfg.num_hidden_layers >= 12  # estimates below are for BERT-large on an H100/H200
    # The fixture check needs the carried files; the rest does not.
    no_carry = f"run benchmarks/gpu_carry.sh first: {CARRY_DIR}/{missing[0]} is missing" if missing else None
    parts = [
        Part("fixture", lambda: checks.fixture_outputs(setup), 15, skip=no_carry),
        Part("cpu_vs_device", lambda: checks.cpu_vs_device_fp32(setup), 60 if big else 10),
        Part("bf16_grads", lambda: checks.bf16_vs_fp32_grads(setup), 15 if big else 5),
        Part("lamb_step", lambda: checks.lamb_step(setup), 30 if big else 5),
        Part("padding", lambda: checks.padding(setup), 10 if big else 5),
        Part("attention", lambda: checks.attention_kernels(setup), 20 if big else 5),
        Part("resume", lambda: checks.resume(setup), 40 if big else 10),
    ]
    parts.append(Part("matmul", lambda: speed.matmul_tflops(device, 8192 if gpu else 1024), 15 if gpu else 5))
    peer_why = "--peer off" if args.peer == "off" else speed.peer_missing()
    compile_on = args.compile == "on" or (args.compile == "auto" and gpu)
    steps = dict(warmup=3 if gpu else 1, repeats=args.repeats or (5 if gpu else 2), steps=args.steps or (5 if gpu else 1))
    shapes = (("phase1", 128, 20, args.phase1_batch or (64 if gpu else 8)),
              ("phase2", 512, 80, args.phase2_batch or (32 if gpu else 2)))
    for name, T, P, B in shapes:  # phase 1 first, eager then compiled: the goal is phase 1's speed
        for compiled in (False, True):
            label = f"{name}_{'compile' if compiled else 'eager'}"
            skip = "compile measured on a GPU only (--compile on forces it)" if compiled and not compile_on else None
            parts.append(Part(label, _speed_part(device, cfg, T, P, B, compiled, peer_why, args, report, steps),
                              (150 if compiled else 45) if big else (20 if T == 128 else 30), skip=skip))
    run_parts(parts, budget, report, log=lambda line: print(line, flush=True), after=_free)
    report.data["meta"]["seconds"] = round(budget.elapsed(), 1)
    report.write()
    print("\n" + table(report.data), flush=True)
    bad = failed(report.data)
    print(f"\n{len(bad)} part(s) failed{': ' + ', '.join(bad) if bad else ''}; report: {report.path}", flush=True)
    return 1 if bad else 0


def _speed_part(device, cfg, T, P, B, compiled, peer_why, args, report, steps):
    def run() -> dict:
        matmul = report.data["parts"].get("matmul", {}).get("tflops")
        peak = args.peak_tflops if device.type == "cuda" else None
        out = speed.pretrain_speed(device, cfg, T, P, B, compiled, peer_why is None, peak, matmul, **steps)
        if peer_why:
            out["peer_skipped"] = peer_why
        return out
    return run


def _free() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
