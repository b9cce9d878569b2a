"""The correctness checks of benchmarks/gpu_check.py. Each returns a dict with `ok` and the numbers
behind it, and each can fail: the yardsticks are in gpu_agree.py, the tolerances here.

Shapes: B batch, T sequence length, P masked positions, V vocabulary.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bertkit.checkpoint import load_model_folder, load_training, save_training
from bertkit.config import BertConfig
from bertkit.distributed import set_tf32
from bertkit.model import BertForPreTraining
from bertkit.optim import make_optimizer
from bertkit.tasks.pretrain import pretraining_loss

import gpu_agree as agree
from gpu_report import CARRY_DIR, fmt

REPO = Path(__file__).resolve().parents[1]
VOCAB = REPO / "src" / "bertkit" / "assets" / "vocab" / "uncased_vocab.txt"


def make_batch(cfg: BertConfig, lengths: list[int], T: int, P: int, seed: int = 0) -> dict:
    """A pretraining batch on the CPU in pretraining_loss's layout: sequence b has lengths[b] real
    tokens ([CLS] first, [SEP] last) and P masked positions among them, then padding to T."""
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    ids = torch.randint(999, cfg.vocab_size, (B, T), generator=g)  # (B, T)
    mask = torch.zeros(B, T, dtype=torch.long)  # (B, T), 1 for real tokens
    types = torch.zeros(B, T, dtype=torch.long)
    pos = torch.zeros(B, P, dtype=torch.long)  # (B, P)
    weights = torch.zeros(B, P)  # (B, P), 1 for real predictions
    for b, n in enumerate(lengths):
        ids[b, 0], ids[b, n - 1], ids[b, n:] = 101, 102, 0
        mask[b, :n] = 1
        types[b, n // 2:n] = 1
        k = min(P, n - 2)  # short sequences have fewer predictions, as Google's data has
        pos[b, :k] = torch.randperm(n - 2, generator=g)[:k].sort().values + 1
        weights[b, :k] = 1
    labels = ids.gather(1, pos)  # (B, P)
    ids.scatter_(1, pos, torch.where(weights > 0, 103, ids.gather(1, pos)))
    return dict(input_ids=ids, segment_ids=types, input_mask=mask, masked_lm_positions=pos,
                masked_lm_ids=labels, masked_lm_weights=weights,
                next_sentence_labels=torch.randint(0, 2, (B,), generator=g))


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: None if v is None else v.to(device) for k, v in batch.items()}


def autocast(precision: str, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def gradients(model: torch.nn.Module, batch: dict, precision: str = "fp32") -> tuple[float, dict]:
    """Loss and every parameter's gradient (fp32, on the CPU) of one forward and backward pass."""
    model.zero_grad(set_to_none=True)
    with autocast(precision, next(model.parameters()).device):
        loss, _ = pretraining_loss(model, batch)
    loss.backward()
    grads = {n: p.grad.detach().float().cpu() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


@dataclass
class Setup:
    """What the checks share: the device, the model they test (BERT-large on a GPU), the carried
    files, and one computation several checks compare against (made once, on first use)."""

    device: torch.device
    config: BertConfig
    resume_config: BertConfig  # the model of the checkpoint check (smaller: it writes and reads files)
    carry: Path = REPO / CARRY_DIR
    T: int = 128
    P: int = 20
    _shared: dict = field(default_factory=dict)

    def large(self) -> dict:
        """BERT-large (or the given model) at batch 2, one sequence padded: the same weights and
        batch on the CPU and on the device, fp32 with TF32 off, eval mode (no dropout)."""
        if not self._shared:
            torch.manual_seed(0)
            cpu_model = BertForPreTraining(self.config).eval()
            init = {k: v.clone() for k, v in cpu_model.state_dict().items()}
            batch = make_batch(self.config, [self.T, self.T * 3 // 4], self.T, self.P, seed=1)
            cpu_loss, cpu_grads = gradients(cpu_model, batch)
            set_tf32(False)
            dev_model = copy.deepcopy(cpu_model).to(self.device)
            dev_loss, dev_grads = gradients(dev_model, to_device(batch, self.device))
            del cpu_model
            self._shared.update(init=init, batch=batch, cpu_loss=cpu_loss, cpu_grads=cpu_grads,
                                dev_model=dev_model, dev_loss=dev_loss, dev_grads=dev_grads)
        return self._shared


def fixture_outputs(s: Setup) -> dict:
    """The TensorFlow-written fixture's weights on the device against the reference outputs that
    transformers computed (tests/test_model.py does the same on the CPU), at the real tokens: fp32 with
    TF32 off within 1e-5 absolute, bf16 autocast within 1e-2 relative (L2). The fixture's NSP logits are about 0.02
    in size, so bf16's rounding of them alone is near that limit (0.0084 on a CPU here)."""
    config, state, _, _ = load_model_folder(s.carry / "fixture_model")
    model = BertForPreTraining(config).eval()
    model.load_state_dict(state)
    model.to(s.device)
    ref = {k: torch.from_numpy(v) for k, v in np.load(s.carry / "reference_outputs.npz").items()}
    inputs = [ref[k].to(s.device) for k in ("input_ids", "token_type_ids", "attention_mask")]
    real = ref["attention_mask"].bool()  # (3, 24): the unpadded path leaves padding positions at zero
    out = {}
    set_tf32(False)
    for precision in ("fp32", "bf16"):
        with torch.no_grad(), autocast(precision, s.device):
            mlm, nsp = model(*inputs)  # (3, 24, V), (3, 2)
        if precision == "fp32":
            out["fp32_mlm"] = agree.close_abs(mlm[real.to(s.device)], ref["prediction_logits"][real], 1e-5)
            out["fp32_nsp"] = agree.close_abs(nsp, ref["seq_relationship_logits"], 1e-5)
        else:
            out["bf16_mlm"] = agree.close_rel(mlm.float()[real.to(s.device)], ref["prediction_logits"][real], 1e-2)
            out["bf16_nsp"] = agree.close_rel(nsp.float(), ref["seq_relationship_logits"], 1e-2)
    return {**out, "ok": agree.all_ok(*out.values()),
            "summary": f"fp32 max abs {fmt(out['fp32_mlm'].get('max_abs_diff'))}/{fmt(out['fp32_nsp'].get('max_abs_diff'))} "
                       f"(MLM/NSP, <=1e-5), bf16 rel L2 {fmt(out['bf16_mlm'].get('rel_l2'))}/"
                       f"{fmt(out['bf16_nsp'].get('rel_l2'))} (<=1e-2)"}


def cpu_vs_device_fp32(s: Setup) -> dict:
    """Loss and gradients of the same fp32 step on the CPU and on the device (TF32 off)."""
    r = s.large()
    loss = agree.scalars_close(r["dev_loss"], r["cpu_loss"], 1e-5)
    grads = agree.tensors_rel_l2(r["dev_grads"], r["cpu_grads"], 1e-3)
    return {"loss": loss, "grads": grads, "ok": agree.all_ok(loss, grads),
            "summary": f"loss rel {fmt(loss['rel_diff'])} (<=1e-5), worst grad rel L2 "
                       f"{fmt(grads.get('worst_rel_l2'))} (<=1e-3)"}


def bf16_vs_fp32_grads(s: Setup) -> dict:
    """bf16 autocast against fp32 on the device: cosine of each gradient tensor."""
    r = s.large()
    loss, grads = gradients(r["dev_model"], to_device(r["batch"], s.device), "bf16")
    lossc = agree.scalars_close(loss, r["dev_loss"], 1e-2)
    cos = agree.tensors_cosine(grads, r["dev_grads"], 0.99)
    return {"loss": lossc, "grads": cos, "ok": agree.all_ok(lossc, cos),
            "summary": f"min cosine {fmt(cos.get('min_cosine'), 5)} (>=0.99, {cos.get('worst_tensor')}), "
                       f"loss rel {fmt(lossc['rel_diff'])} (<=1e-2)"}


def lamb_updates(model: torch.nn.Module, grads: dict, lr: float) -> tuple[dict, float]:
    """One LAMB step from the given gradients: each tensor's update (after - before, in fp64 on the
    CPU, where the difference of two fp32 numbers is exact) and the global gradient norm."""
    params = dict(model.named_parameters())
    before = {n: p.detach().cpu().double() for n, p in params.items()}
    for n, p in params.items():
        p.grad = grads[n].to(p.device, p.dtype, copy=True)  # LAMB clips in place: keep the caller's
    opt = make_optimizer("lamb", model, lr=lr)
    opt.step()
    updates = {n: p.detach().cpu().double() - before[n] for n, p in params.items()}
    model.zero_grad(set_to_none=True)
    return updates, float(opt.last_grad_norm)


def lamb_step(s: Setup) -> dict:
    """One LAMB step from the same weights and gradients on the CPU and on the device. The updates
    are compared, not the weights: a step moves each tensor by lr x trust ratio, so weights agree
    to that much whatever the step did. lr 1e-2 keeps the update far above the weights' rounding."""
    r = s.large()
    cpu = BertForPreTraining(s.config)
    cpu.load_state_dict(r["init"])
    cpu_upd, cpu_norm = lamb_updates(cpu, r["cpu_grads"], 1e-2)
    dev = copy.deepcopy(cpu)
    dev.load_state_dict(r["init"])
    dev_upd, dev_norm = lamb_updates(dev.to(s.device), r["cpu_grads"], 1e-2)
    norm = agree.scalars_close(dev_norm, cpu_norm, 1e-5)
    upd = agree.tensors_rel_l2(dev_upd, cpu_upd, 1e-3)
    moved = sum(float(u.norm()) for u in cpu_upd.values()) > 0  # a step that did nothing proves nothing
    return {"grad_norm": norm, "updates": upd, "moved": moved, "ok": moved and agree.all_ok(norm, upd),
            "summary": f"worst update rel L2 {fmt(upd.get('worst_rel_l2'))} (<=1e-3), "
                       f"grad norm rel {fmt(norm['rel_diff'])} (<=1e-5)"}


def padding(s: Setup) -> dict:
    """A padded batch against each of its sequences run alone at its own length, without a mask
    (fp32, TF32 off): padding must change nothing a real token sees."""
    model = s.large()["dev_model"].eval()
    T = s.T
    lengths = [T, T - 40, T // 2, 17]
    batch = to_device(make_batch(s.config, lengths, T, s.P, seed=2), s.device)
    set_tf32(False)
    with torch.no_grad():
        mlm, nsp = model(batch["input_ids"], batch["segment_ids"], batch["input_mask"],
                         batch["masked_lm_positions"])  # (B, P, V), (B, 2)
        worst = {}
        for b, n in enumerate(lengths):
            k = min(s.P, n - 2)
            one_mlm, one_nsp = model(batch["input_ids"][b:b + 1, :n], batch["segment_ids"][b:b + 1, :n],
                                     None, batch["masked_lm_positions"][b:b + 1, :k])
            worst[f"len{n}_mlm"] = agree.close_rel(mlm[b:b + 1, :k], one_mlm, 1e-4, by="max")
            worst[f"len{n}_nsp"] = agree.close_rel(nsp[b:b + 1], one_nsp, 1e-4, by="max")
    top = max(r.get("max_rel_diff", float("inf")) for r in worst.values())
    return {**worst, "ok": agree.all_ok(*worst.values()),
            "summary": f"worst max rel {fmt(top)} (<=1e-4) over lengths {lengths}"}


def resume(s: Setup) -> dict:
    """Two training steps without a break, against: one step, a checkpoint written from the device
    and loaded back, then the second step. fp32 with TF32 off, dropout on (reseeded per step, as the
    training loop does). On a CPU the two must be bit-identical; on CUDA, where some backward kernels
    add in a varying order, equal to rounding (updates within 1e-3)."""
    cfg = s.resume_config
    torch.manual_seed(0)
    init = BertForPreTraining(cfg).state_dict()
    b1, b2 = (to_device(make_batch(cfg, [s.T, s.T - 30], s.T, s.P, seed=10 + i), s.device) for i in range(2))
    set_tf32(False)

    def step(model, opt, batch, seed) -> float:
        torch.manual_seed(seed)
        loss, _ = pretraining_loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    def weights(model) -> dict:
        return {k: v.detach().cpu().double() for k, v in model.state_dict().items()}

    model = BertForPreTraining(cfg)
    model.load_state_dict(init)
    model.to(s.device).train()
    opt = make_optimizer("lamb", model, lr=1e-3)
    step(model, opt, b1, 1)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        folder = save_training(tmp, 1, cfg, model.state_dict(), VOCAB, True, opt.state_dict(), {})
        before = weights(model)
        loss_a = step(model, opt, b2, 2)
        after_a = weights(model)
        cfg2, state, opt_state, trainer = load_training(folder)
    again = BertForPreTraining(cfg2)
    again.load_state_dict(state)
    again.to(s.device).train()
    opt2 = make_optimizer("lamb", again, lr=1e-3)
    opt2.load_state_dict(opt_state)
    loaded_equal = all(torch.equal(before[k], v) for k, v in weights(again).items()) and trainer["step"] == 1
    loss_b = step(again, opt2, b2, 2)
    after_b = weights(again)
    bitwise = loss_a == loss_b and all(torch.equal(after_a[k], after_b[k]) for k in after_a)
    upd = agree.tensors_rel_l2({k: after_b[k] - before[k] for k in before},
                               {k: after_a[k] - before[k] for k in before}, 1e-3)
    loss = agree.scalars_close(loss_b, loss_a, 1e-6)
    cpu = s.device.type == "cpu"
    ok = loaded_equal and (bitwise if cpu else agree.all_ok(loss, upd))
    return {"loaded_equal": loaded_equal, "bitwise": bitwise, "loss": loss, "updates": upd,
            "required": "bitwise" if cpu else "updates within 1e-3", "ok": ok,
            "summary": f"loaded exactly: {loaded_equal}, next step bit-identical: {bitwise}, "
                       f"worst update rel L2 {fmt(upd.get('worst_rel_l2'))}"}


# aten operators of scaled_dot_product_attention's back ends, as the profiler names them.
SDPA_OPS = {
    "flash": ("_scaled_dot_product_flash_attention",),
    "cudnn": ("_scaled_dot_product_cudnn_attention",),
    "efficient": ("_scaled_dot_product_efficient_attention",),
    "math": ("_scaled_dot_product_attention_math",),
}
KERNEL_WORDS = ("flash", "fmha", "attention", "sdpa", "mha", "softmax")


def attention_kind(names: list[str]) -> str:
    """Which attention ran, from the profiler's operator names: an SDPA back end, or `spelled_out`
    (matrix products and softmax, bertkit's choice when training on a CPU)."""
    found = [kind for kind, ops in SDPA_OPS.items() if any(op in n for n in names for op in ops)]
    if len(found) > 1 and "math" in found:
        return "math"  # a fused back end that fell back: the fallback is what ran
    if found:
        return found[0]
    return "spelled_out" if any("softmax" in n for n in names) else "none"


def attention_kernels(s: Setup) -> dict:
    """Profile one training step (forward and backward, bf16 on a GPU) without padding and with,
    and name the attention that ran. On CUDA a fused kernel must run in both (flash or cuDNN when
    nothing is padded); on a CPU training spells attention out (model.attention says why)."""
    from torch.profiler import ProfilerActivity, profile

    model = s.large()["dev_model"].train()
    precision = "bf16" if s.device.type == "cuda" else "fp32"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if s.device.type == "cuda" else [])
    out = {}
    for name, lengths in (("unpadded", [s.T] * 4), ("padded", [s.T, s.T - 40, s.T // 2, 17])):
        batch = to_device(make_batch(s.config, lengths, s.T, s.P, seed=3), s.device)
        if name == "unpadded":
            batch["input_mask"] = None  # what the pretraining task passes when nothing is padded
        with profile(activities=activities) as prof:
            gradients(model, batch, precision)
        names = [e.key for e in prof.key_averages()]
        kernels = sorted({n for n in names if any(w in n.lower() for w in KERNEL_WORDS)})
        out[name] = {"kind": attention_kind(names), "names": [n[:120] for n in kernels[:12]]}
    model.eval()
    if s.device.type == "cuda":
        ok = out["unpadded"]["kind"] in ("flash", "cudnn") and out["padded"]["kind"] in ("flash", "cudnn", "efficient")
    else:
        ok = out["unpadded"]["kind"] == out["padded"]["kind"] == "spelled_out"
    return {**out, "ok": ok, "summary": f"unpadded {out['unpadded']['kind']}, padded {out['padded']['kind']}"}
