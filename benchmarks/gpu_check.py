"""One script for a CUDA machine: is bf16 training right, and how fast is it? Writes a JSON report.

1. BERT-large, 5 LAMB steps from the same weights on the same batch in fp32 and in bf16 autocast:
   the losses agree within 2% at every step, and the bf16 weights stay within 1% (relative L2) of fp32.
2. BERT-large pretraining throughput on one GPU, phase 1 (seq 128, 20 masked) and phase 2 (seq 512,
   80 masked), bf16, eager and torch.compile: sequences/s and MFU against 989 TFLOP/s (H100 SXM dense
   bf16; pass --peak_tflops for another card).
3. SQuAD fine-tuning throughput (BertForQuestionAnswering, seq 384), sequences/s.

    python benchmarks/gpu_check.py --json gpu_report.json          # about 5-8 minutes on an H100

FLOPs per sequence: see benchmarks/pretrain_throughput.py (3x the forward FLOPs of the useful work).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from bertkit.config import variant
from bertkit.model import BertForPreTraining, BertForQuestionAnswering
from bertkit.optim import make_optimizer
from bertkit.tasks.pretrain import pretraining_loss


def flops_per_seq(cfg, T: int, P: int) -> float:
    """The conventional count (every layer at every position), the one published GPU figures use;
    bertkit's last layer does less, so its MFU here is what a full model would need to match."""
    L, H, I, V = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    return 3 * (L * (2 * T * (4 * H * H + 2 * H * I) + 4 * T * T * H) + 2 * P * (H * H + H * V) + 2 * H * H + 4 * H)


def pretrain_batch(B: int, T: int, P: int, V: int, device, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(999, V, (B, T), generator=g)
    pos = torch.stack([torch.randperm(T - 2, generator=g)[:P].sort().values + 1 for _ in range(B)])
    labels = ids.gather(1, pos)
    ids.scatter_(1, pos, 103)
    types = torch.zeros(B, T, dtype=torch.long)
    types[:, T // 2:] = 1
    b = dict(input_ids=ids, segment_ids=types, input_mask=None, masked_lm_positions=pos, masked_lm_ids=labels,
             masked_lm_weights=torch.ones(B, P), next_sentence_labels=torch.randint(0, 2, (B,), generator=g))
    return {k: v.to(device) if v is not None else None for k, v in b.items()}


def agreement(device, steps: int = 5) -> dict:
    cfg = variant("large")
    torch.manual_seed(0)
    init = BertForPreTraining(cfg).state_dict()
    b = pretrain_batch(16, 128, 20, cfg.vocab_size, device)
    runs = {}
    for precision in ("fp32", "bf16"):
        model = BertForPreTraining(cfg).to(device)
        model.load_state_dict(init)
        model.eval()  # no dropout: the two runs see the same function
        opt = make_optimizer("lamb", model, lr=1e-4)
        losses = []
        for _ in range(steps):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss, _ = pretraining_loss(model, b)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        runs[precision] = (losses, {k: v.detach().float() for k, v in model.state_dict().items()})
        del model, opt
        torch.cuda.empty_cache()
    (l32, w32), (l16, w16) = runs["fp32"], runs["bf16"]
    loss_rel = max(abs(a - b) / abs(a) for a, b in zip(l32, l16))
    num = sum(((w32[k] - w16[k]) ** 2).sum() for k in w32) ** 0.5
    den = sum((w32[k] ** 2).sum() for k in w32) ** 0.5
    weight_rel = float(num / den)
    return {"fp32_losses": l32, "bf16_losses": l16, "max_loss_rel_diff": loss_rel, "weight_rel_l2": weight_rel,
            "ok": loss_rel < 0.02 and weight_rel < 0.01}


def throughput(model, step, batch_size: int, warmup: int = 3, iters: int = 10) -> float:
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        step()
    torch.cuda.synchronize()
    return batch_size * iters / (time.perf_counter() - t)


def pretrain_speed(device, T: int, P: int, B: int, compile: bool, peak: float) -> dict:
    cfg = variant("large")
    model = BertForPreTraining(cfg).to(device).train()
    opt = make_optimizer("lamb", model, lr=1e-4)
    run = torch.compile(model) if compile else model
    b = pretrain_batch(B, T, P, cfg.vocab_size, device)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = pretraining_loss(run, b)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    sps = throughput(model, step, B)
    out = {"seq": T, "batch": B, "compile": compile, "seq_per_s": round(sps, 1),
           "mfu": round(sps * flops_per_seq(cfg, T, P) / peak, 4),
           "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)}
    del model, opt, run
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return out


def squad_speed(device, B: int = 32, T: int = 384) -> dict:
    cfg = variant("large")
    model = BertForQuestionAnswering(cfg).to(device).train()
    opt = make_optimizer("adamw", model, lr=3e-5)
    ids = torch.randint(999, cfg.vocab_size, (B, T), device=device)
    starts, ends = torch.randint(0, T, (B,), device=device), torch.randint(0, T, (B,), device=device)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            s, e = model(ids)
            loss = (F.cross_entropy(s.float(), starts) + F.cross_entropy(e.float(), ends)) / 2
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return {"seq": T, "batch": B, "seq_per_s": round(throughput(model, step, B), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default="gpu_report.json")
    p.add_argument("--peak_tflops", type=float, default=989.0, help="Dense bf16 peak of the card (H100 SXM: 989).")
    p.add_argument("--skip_compile", action="store_true")
    args = p.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA device"
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 in the agreement check
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    t0 = time.time()
    report["agreement"] = agreement(device)
    print("agreement", json.dumps(report["agreement"]), flush=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    peak = args.peak_tflops * 1e12
    report["pretrain"] = []
    for T, P, B in ((128, 20, 256), (512, 80, 32)):
        for compile in ((False,) if args.skip_compile else (False, True)):
            r = pretrain_speed(device, T, P, B, compile, peak)
            report["pretrain"].append(r)
            print("pretrain", json.dumps(r), flush=True)
    report["squad"] = squad_speed(device)
    print("squad", json.dumps(report["squad"]), flush=True)
    report["seconds"] = round(time.time() - t0, 1)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.json} in {report['seconds']} s")


if __name__ == "__main__":
    main()
