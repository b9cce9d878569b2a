"""Optimizers and learning-rate schedules for BERT: LAMB (pretraining), AdamW (fine-tuning), the
decay / no-decay parameter groups both use, layer-wise learning-rate decay for fine-tuning, and
warmup + polynomial decay (NVIDIA's LAMB schedule: power 0.5; Google's fine-tuning: linear, power 1).

The recipe is the one the seed (Habana's TensorFlow BERT, itself NVIDIA's TensorFlow BERT) and
NVIDIA's PyTorch BERT follow: LAMB with betas 0.9/0.999, eps 1e-6, weight decay 0.01 except for
biases and LayerNorm parameters, gradients clipped to global norm 1.0; AdamW for fine-tuning.

A training step with either optimizer:

    opt = make_optimizer("lamb", model, lr=6e-3)
    lr_at = WarmupPolyDecay(num_warmup_steps=2000, num_train_steps=7038, power=0.5)
    for g in opt.param_groups: g["lr"] = 6e-3 * lr_at(step)   # what the training loop does
    loss.backward()
    if not clips_gradients(opt):          # AdamW: the caller clips
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    opt.step(); opt.zero_grad()
    opt.last_grad_norm                    # LAMB: the global norm before clipping, for the log
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from bertkit import BertkitError


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning: Training BERT in 76
    minutes", Algorithm 2), with global-norm gradient clipping inside the step as in NVIDIA's BERT.

    One step, per parameter tensor w with gradient g (t counts this tensor's updates from 1):
        g     <- g * min(1, max_grad_norm / ||all gradients||)     (skipped when max_grad_norm is falsy)
        m     <- beta1 m + (1 - beta1) g ;  v <- beta2 v + (1 - beta2) g^2
        u     <- (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps) + weight_decay * w
        ratio <- ||w|| / ||u||, or 1 where either norm is 0
        w     <- w - lr * ratio * u

    Like the seed's TensorFlow LAMB (and the paper), the trust ratio applies to every tensor, also
    to those without weight decay; NVIDIA's apex FusedLAMB by default applies it only where weight
    decay is non-zero.

    Clipping scales fp32 gradients in place (as `clip_grad_norm_` does), so after `step()` their
    `.grad` holds the clipped values. `last_grad_norm` is the global L2 norm of the gradients before
    clipping: a 0-d fp32 tensor on the first gradient's device, never read back to the host here,
    so logging it costs a device sync only when the caller reads it. It is computed whether or not
    clipping is on. A non-finite norm is not caught here (it would need a sync): skipping such steps
    under loss scaling belongs to the training loop, which can test `last_grad_norm`.

    State per parameter: `step` (a 0-d fp32 CPU tensor, as in torch's Adam, so `state_dict()`
    resumes exactly), `exp_avg` and `exp_avg_sq`, always fp32. Parameters are expected to be fp32
    master weights; a bf16 (or fp16) parameter is updated in fp32 (its value and gradient cast up,
    the result rounded back), which loses updates smaller than the parameter's precision: keep fp32
    master weights for training.

    The arithmetic uses `torch._foreach_*` kernels over each parameter group's tensors, grouped by
    device and dtype; torch has no fused LAMB kernel to call.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.01, max_grad_norm: float | None = 1.0):
        if not lr >= 0.0:
            raise ValueError(f"LAMB learning rate must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"LAMB betas must be in [0, 1), got {betas}")
        if not eps > 0.0:  # with 0, a gradient element that has always been 0 gives 0/0
            raise ValueError(f"LAMB eps must be > 0, got {eps}")
        if not weight_decay >= 0.0:
            raise ValueError(f"LAMB weight_decay must be >= 0, got {weight_decay}")
        if max_grad_norm is not None and not max_grad_norm >= 0.0:
            raise ValueError(f"LAMB max_grad_norm must be >= 0 or None, got {max_grad_norm}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        # One threshold for all groups: the norm is global. None or 0 turns clipping off.
        self.max_grad_norm = max_grad_norm
        self.last_grad_norm: torch.Tensor | None = None

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        # Pass 1: fp32 views of every gradient (a cast copy for bf16 ones), for the global norm.
        buckets = []  # (group, params, fp32 grads) per group and (device, dtype)
        for group in self.param_groups:
            for params in _by_device_and_dtype(p for p in group["params"] if p.grad is not None):
                if any(p.grad.is_sparse for p in params):
                    raise RuntimeError("LAMB does not support sparse gradients")
                buckets.append((group, params, [p.grad.float() for p in params]))
        if not buckets:
            return loss

        device = buckets[0][2][0].device
        norms = [torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).to(device)
                 for _, _, grads in buckets]  # one 0-d tensor per bucket
        total = torch.linalg.vector_norm(torch.stack(norms))  # 0-d, fp32
        self.last_grad_norm = total
        # min(1, max / norm) as max / max(norm, max): TensorFlow's clip_by_global_norm, no host sync.
        coef = self.max_grad_norm / total.clamp(min=self.max_grad_norm) if self.max_grad_norm else None

        # Pass 2: the LAMB update.
        for group, params, grads in buckets:
            if coef is not None:
                torch._foreach_mul_(grads, coef.to(grads[0].device))
            self._update(group, params, grads)
        return loss

    def _update(self, group: dict, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """Update `params` (one device and dtype) from their fp32 `grads`, already clipped."""
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
        steps = [self.state[p]["step"] for p in params]
        m = [self.state[p]["exp_avg"] for p in params]
        v = [self.state[p]["exp_avg_sq"] for p in params]
        w = [p.float() for p in params]  # the parameters themselves when fp32, else fp32 copies

        torch._foreach_add_(steps, 1.0)
        torch._foreach_lerp_(m, grads, 1.0 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, value=1.0 - beta2)

        # The step counters live on the CPU, so reading them is not a device sync.
        bias1 = [1.0 - beta1 ** s.item() for s in steps]
        bias2_sqrt = [(1.0 - beta2 ** s.item()) ** 0.5 for s in steps]
        # m_hat / (sqrt(v_hat) + eps) built in one new buffer: on the CPU each fresh buffer costs
        # more than a pass over it (its pages are faulted in), so no other temporary is made.
        update = torch._foreach_sqrt(v)
        torch._foreach_div_(update, bias2_sqrt)
        torch._foreach_add_(update, eps)  # sqrt(v_hat) + eps
        torch._foreach_mul_(update, bias1)
        torch._foreach_reciprocal_(update)
        torch._foreach_mul_(update, m)  # m_hat / (sqrt(v_hat) + eps)
        if wd != 0.0:
            torch._foreach_add_(update, w, alpha=wd)

        w_norm = torch.stack(torch._foreach_norm(w))  # (n,)
        u_norm = torch.stack(torch._foreach_norm(update))  # (n,)
        # where() picks 1 before the 0/0 or x/0 can reach the parameters.
        ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, 1.0)  # (n,)
        torch._foreach_mul_(update, ratio.unbind(0))
        torch._foreach_add_(w, update, alpha=-lr)
        if params[0].dtype != torch.float32:
            torch._foreach_copy_(params, w)

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's loader casts state to each parameter's dtype; keep the moments in fp32 instead."""
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for index, saved in state_dict["state"].items():
            p = params[index]
            for key in ("exp_avg", "exp_avg_sq"):
                if key in saved and p.dtype != torch.float32:
                    self.state[p][key] = saved[key].to(device=p.device, dtype=torch.float32)


def _by_device_and_dtype(params: Iterable[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Split tensors into lists of one device and dtype each, for the foreach kernels."""
    groups: dict[tuple, list[torch.Tensor]] = defaultdict(list)
    for p in params:
        groups[(p.device, p.dtype)].append(p)
    return list(groups.values())


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two optimizer groups: [decay, no-decay], trainable parameters only, each once.

    No decay for LayerNorm parameters (found by module type), biases and any other 1-D parameter
    (the MLM output bias); everything else, embeddings included, is decayed. This is the split of
    Google's BERT, which excludes names matching "LayerNorm", "layer_norm" and "bias"
    (optimization.py), written without relying on parameter names.
    """
    layer_norm = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm)
                  for p in m.parameters(recurse=False)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # shared (tied) tensors are listed once
        if not p.requires_grad:
            continue
        if id(p) in layer_norm or p.ndim <= 1 or name.rsplit(".", 1)[-1] == "bias":
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


OPTIMIZERS = ("lamb", "adamw")


def make_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float = 0.01,
                   betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                   max_grad_norm: float | None = 1.0) -> torch.optim.Optimizer:
    """LAMB (ours) or AdamW (torch's) over `param_groups(model, weight_decay)`.

    LAMB clips gradients to `max_grad_norm` inside `step()`. AdamW does not: the caller clips
    (`torch.nn.utils.clip_grad_norm_`) before `step()`; `clips_gradients(optimizer)` says which
    case applies. torch's AdamW corrects the moments' bias; Google's fine-tuning Adam (and the
    seed's) does not, which changes only the first few hundred updates, mostly during warmup.
    """
    if name not in OPTIMIZERS:
        raise BertkitError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    if not lr > 0.0:
        raise BertkitError(f"--learning_rate must be > 0, got {lr}")
    if not weight_decay >= 0.0:
        raise BertkitError(f"weight_decay must be >= 0, got {weight_decay}")
    if max_grad_norm is not None and not max_grad_norm >= 0.0:
        raise BertkitError(f"max_grad_norm must be >= 0 (0 turns clipping off), got {max_grad_norm}")
    groups = param_groups(model, weight_decay)
    if name == "lamb":
        return Lamb(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                    max_grad_norm=max_grad_norm)
    devices = {p.device.type for g in groups for p in g["params"]}
    # torch's fused AdamW kernel (one kernel for all tensors) exists for CPU and CUDA; elsewhere
    # torch picks its foreach implementation itself.
    fused = True if devices and devices <= {"cpu", "cuda"} else None
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused)


def clips_gradients(optimizer: torch.optim.Optimizer) -> bool:
    """True when `optimizer.step()` clips the gradients by their global norm itself (LAMB with a
    `max_grad_norm`); otherwise the caller must clip before `step()`."""
    return isinstance(optimizer, Lamb) and bool(optimizer.max_grad_norm)


@dataclass(frozen=True)
class WarmupPolyDecay:
    """Learning-rate multiplier that the training loop applies to the peak rate, called with the number of
    optimizer updates already done (0 for the first update, as in Google's BERT, whose first update
    has learning rate 0):

        step < W:       step / W                            (linear warmup)
        step >= T:      0
        otherwise:      (1 - step / T) ** power             continuous=False
                        ((T - step) / (T - W)) ** power     continuous=True

    W = num_warmup_steps, T = num_train_steps. W may exceed T: the rate then rises for the whole
    run and never decays (Google's and NVIDIA's schedules allow it; the usual way to time a short
    run with a long recipe's warm-up; see `long_warmup_note`). Without `continuous` the decay runs from step 0 and
    the rate drops at the end of warmup from 1 to (1 - W/T) ** power: NVIDIA's BERT schedule for
    LAMB (PolyWarmUpScheduler in its PyTorch recipe, power 0.5; the same power 0.5 in its
    TensorFlow optimization.py, which the seed uses) and Google's (tf.train.polynomial_decay,
    power 1.0). With `continuous` the decay starts from 1 at the end of warmup: the seed's AdamW
    schedule, which scales its initial rate by 1 / (1 - W/T) for exactly this purpose.

    LambdaLR saves this object's fields in its state_dict.
    """

    num_warmup_steps: int
    num_train_steps: int
    power: float = 0.5
    continuous: bool = False

    def __post_init__(self):
        if self.num_train_steps <= 0:
            raise BertkitError(f"--num_train_steps must be > 0, got {self.num_train_steps}")
        if self.num_warmup_steps < 0:
            raise BertkitError(f"--num_warmup_steps must be >= 0, got {self.num_warmup_steps}")
        if not self.power > 0:
            raise BertkitError(f"learning-rate decay power must be > 0, got {self.power}")

    def __call__(self, step: int) -> float:
        W, T = self.num_warmup_steps, self.num_train_steps
        if step < W:
            return step / W
        if step >= T:
            return 0.0
        if self.continuous:
            return ((T - step) / (T - W)) ** self.power
        return (1.0 - step / T) ** self.power


def long_warmup_note(num_warmup_steps: int, num_train_steps: int) -> str | None:
    """One line telling that the warm-up outlasts the run (accepted), or None when it does not."""
    W, T = num_warmup_steps, num_train_steps
    if W <= T:
        return None
    return (f"note: the warm-up ({W} steps) is longer than the run ({T} steps): the learning rate stays in "
            f"warm-up and reaches {max(T - 1, 0) / W:.1%} of its peak at the last step")


class LayerwiseAdamW(torch.optim.AdamW):
    """AdamW whose parameter groups each carry an `lr_scale`: the training loop sets one learning
    rate on every group, and each group steps with that rate times its scale."""

    @torch.no_grad()
    def step(self, closure=None):
        rates = [g["lr"] for g in self.param_groups]
        for g in self.param_groups:
            g["lr"] = g["lr"] * g["lr_scale"]
        try:
            return super().step(closure)
        finally:
            for g, lr in zip(self.param_groups, rates):
                g["lr"] = lr


def make_finetune_optimizer(model: nn.Module, lr: float, weight_decay: float,
                            layerwise_lr_decay: float = 1.0) -> torch.optim.Optimizer:
    """AdamW (eps 1e-6, no weight decay for biases and LayerNorm). With `layerwise_lr_decay` < 1,
    layer k of L (embeddings 0, heads L + 1) learns at decay ** (L + 1 - k) of the peak rate."""
    if layerwise_lr_decay >= 1.0:
        return make_optimizer("adamw", model, lr=lr, weight_decay=weight_decay, eps=1e-6)
    L = model.config.num_hidden_layers

    def depth(name: str) -> int:
        if name.startswith("bert.embeddings."):
            return 0
        if name.startswith("bert.layers."):
            return int(name.split(".")[2]) + 1
        return L + 1  # pooler and task head

    names = {id(p): n for n, p in model.named_parameters()}
    groups = []
    for base in param_groups(model, weight_decay):
        by_depth: dict[int, list] = {}
        for p in base["params"]:
            by_depth.setdefault(depth(names[id(p)]), []).append(p)
        groups += [{"params": ps, "weight_decay": base["weight_decay"],
                    "lr_scale": layerwise_lr_decay ** (L + 1 - k)} for k, ps in sorted(by_depth.items())]
    fused = True if {p.device.type for p in model.parameters()} <= {"cpu", "cuda"} else None
    return LayerwiseAdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=weight_decay, fused=fused)
