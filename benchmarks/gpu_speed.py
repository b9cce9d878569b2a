"""The measurements of benchmarks/gpu_check.py: a bf16 matrix product (the ceiling this card reaches
in this call), then BERT-large pretraining steps, bertkit against transformers' BertForPreTraining
alternated in one process, eager or compiled. Timed with CUDA events (a wall clock on a CPU),
medians of repeats after warm-up.

FLOPs per sequence are the conventional count (every layer at every position, 3x the forward),
the one published GPU figures use; bertkit's last layer and masked-LM head do less, so its MFU here
is what a model doing all that work would need to match.
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from typing import Callable

import torch

from bertkit.config import BertConfig
from bertkit.distributed import Dist, parallelize, set_tf32
from bertkit.model import BertForPreTraining
from bertkit.optim import make_optimizer
from bertkit.tasks.pretrain import drop_full_mask, pretraining_loss

from gpu_checks import autocast, make_batch, to_device
from gpu_report import fmt


def flops_per_seq(cfg: BertConfig, T: int, P: int) -> float:
    L, H, I, V = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    return 3 * (L * (2 * T * (4 * H * H + 2 * H * I) + 4 * T * T * H) + 2 * P * (H * H + H * V) + 2 * H * H + 4 * H)


def realistic_lengths(B: int, T: int, seed: int) -> list[int]:
    """Sequence lengths like Google's pretraining data: 10% short instances of a random length
    (its short_seq_prob), the rest filled to within 3 tokens of T. At T=128 this gives a mean of
    121 real tokens, as the 12,006 instances Google's script made from WikiText-2 have (121.05,
    ../shared/fixtures/google_wikitext2_valid/stats.json)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(B):
        if torch.rand((), generator=g) < 0.1:
            out.append(int(torch.randint(16, T + 1, (), generator=g)))
        else:
            out.append(T - int(torch.randint(0, 4, (), generator=g)))
    return out


def timer(device: torch.device) -> Callable[[Callable[[], None], int], float]:
    """Seconds per call of fn over n calls: CUDA events on a GPU, a wall clock elsewhere."""
    def cuda(fn, n):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / n

    def wall(fn, n):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t) / n

    return cuda if device.type == "cuda" else wall


def matmul_tflops(device: torch.device, n: int = 8192, warmup: int = 3, iters: int = 10) -> dict:
    """A square matrix product, bf16 on a GPU (fp32 on a CPU, smaller): TFLOP/s, median of `iters`."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    time_it = timer(device)
    for _ in range(warmup):
        a @ b
    runs = [time_it(lambda: a @ b, 1) for _ in range(iters)]
    tflops = 2 * n**3 / statistics.median(runs) / 1e12
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "tflops": tflops, "summary": f"{fmt(tflops)} TFLOP/s"}


def peer_missing() -> str | None:
    """Why the transformers side cannot run here, or None."""
    if importlib.util.find_spec("transformers") is None:
        return "transformers is not installed on this machine"
    return None


def _peer_model(cfg: BertConfig):
    import transformers

    hf = transformers.BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
        hidden_act=cfg.hidden_act, hidden_dropout_prob=cfg.hidden_dropout_prob,
        attention_probs_dropout_prob=cfg.attention_probs_dropout_prob,
        max_position_embeddings=cfg.max_position_embeddings, layer_norm_eps=cfg.layer_norm_eps)
    return transformers.BertForPreTraining._from_config(hf, attn_implementation="sdpa")


def _peer_batch(b: dict) -> dict:
    """The same batch in transformers' layout: labels at every position, -100 where none."""
    B, T = b["input_ids"].shape
    labels = torch.full((B, T), -100, dtype=torch.long)
    real = b["masked_lm_weights"] > 0
    rows = torch.arange(B)[:, None].expand_as(real)
    labels[rows[real], b["masked_lm_positions"][real]] = b["masked_lm_ids"][real]
    return dict(input_ids=b["input_ids"], token_type_ids=b["segment_ids"], attention_mask=b["input_mask"],
                labels=labels, next_sentence_label=b["next_sentence_labels"])


def _resident(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def _peer_side(cfg: BertConfig, data: dict, device: torch.device, compile: bool) -> dict:
    before = _resident(device)
    with torch.device(device):
        hf = _peer_model(cfg).to(device).train()
    if compile:
        hf.compile()  # the whole model, as transformers' users compile it
    return dict(model=hf, opt=make_optimizer("lamb", hf, lr=1e-4), batch=to_device(_peer_batch(data), device),
                loss=lambda m, b: m(**b).loss, resident=_resident(device) - before,
                how="whole-model torch.compile" if compile else "eager")


def pretrain_speed(device: torch.device, cfg: BertConfig, T: int, P: int, B: int, compile: bool,
                   peer: bool, peak_tflops: float | None, matmul: float | None,
                   warmup: int = 3, repeats: int = 5, steps: int = 5) -> dict:
    """Training steps per second (forward, backward, LAMB) of bertkit and, with `peer`,
    transformers' BertForPreTraining on the same batch, bf16 autocast on a GPU (fp32 on a CPU),
    dropout on, alternated: each repeat times `steps` steps of one side, then of the other."""
    torch._dynamo.reset()  # a fresh compile for this shape: no graph of the previous one
    set_tf32(True)
    precision = "bf16" if device.type == "cuda" else "fp32"
    data = make_batch(cfg, realistic_lengths(B, T, seed=T), T, P, seed=T)
    sides = {}
    torch.manual_seed(0)
    before = _resident(device)
    with torch.device(device):
        model = BertForPreTraining(cfg).train()
    run = parallelize(model, Dist(device=device), compile=compile)  # per-layer compile, as training does
    ours = to_device(drop_full_mask(dict(data)), device)
    sides["bertkit"] = dict(model=run, opt=make_optimizer("lamb", model, lr=1e-4), batch=ours,
                            loss=lambda m, b: pretraining_loss(m, b)[0], resident=_resident(device) - before,
                            how="per-layer torch.compile" if compile else "eager")
    peer_error = None
    if peer:
        try:
            sides["transformers"] = _peer_side(cfg, data, device, compile)
        except Exception as e:  # noqa: BLE001 - another transformers version: keep bertkit's numbers
            peer_error = f"transformers side failed to build: {type(e).__name__}: {str(e)[:200]}"

    def stepper(side: dict) -> Callable[[], None]:
        def step():
            with autocast(precision, device):
                loss = side["loss"](side["model"], side["batch"])
            loss.backward()
            side["opt"].step()
            side["opt"].zero_grad(set_to_none=True)
        return step

    time_it = timer(device)
    out = {"seq": T, "predictions": P, "batch": B, "compile": compile, "precision": precision,
           "mean_real_tokens": sum(realistic_lengths(B, T, seed=T)) / B}
    if peer_error:
        out["peer_skipped"] = peer_error
    for name, side in sides.items():  # warm-up, compilation included
        t = time.perf_counter()
        time_it(stepper(side), warmup)
        out[f"{name}_warmup_s"] = round(time.perf_counter() - t, 2)
    runs: dict[str, list[float]] = {name: [] for name in sides}
    peaks: dict[str, int] = {}
    for _ in range(repeats):
        for name, side in sides.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            runs[name].append(time_it(stepper(side), steps))
            if device.type == "cuda":
                others = sum(s["resident"] for n, s in sides.items() if n != name)
                peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated(device) - others)
    flops = flops_per_seq(cfg, T, P)
    for name, side in sides.items():
        sps = B / statistics.median(runs[name])
        out[name] = {"seq_per_s": round(sps, 2), "step_ms": [round(r * 1e3, 2) for r in runs[name]], "how": side["how"],
                     "mfu_datasheet": sps * flops / (peak_tflops * 1e12) if peak_tflops else None,
                     "mfu_matmul": sps * flops / (matmul * 1e12) if matmul else None,
                     "peak_mem_gib": round(peaks[name] / 2**30, 2) if name in peaks else None}
    ours = out["bertkit"]
    text = f"bertkit {ours['seq_per_s']} seq/s"
    mfu = [f"{ours[k]:.1%} of {what}" for k, what in (("mfu_datasheet", "datasheet"), ("mfu_matmul", "matmul"))
           if ours[k] is not None]
    if mfu:
        text += f" (MFU {', '.join(mfu)})"
    if "transformers" in out:
        out["speedup"] = ours["seq_per_s"] / out["transformers"]["seq_per_s"]
        text += f", transformers {out['transformers']['seq_per_s']} seq/s, {out['speedup']:.2f}x"
    out["summary"] = text
    del sides, run, model
    torch._dynamo.reset()
    return out
