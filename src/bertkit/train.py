"""The one training loop, shared by pretraining, MRPC and SQuAD: learning rate, micro-steps (no
gradient all-reduce until the last), unscale and clip, step, zero grads, log, evaluate, save.

Everything a resume needs is a function of the step: the learning rate comes from the schedule,
the data position from the step (see stream.py), and the dropout generator is re-seeded from
(seed, global micro-batch) before every micro-step. So a checkpoint holds the weights, the
optimizer state and the step, and a resumed run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from bertkit import BertkitError
from bertkit.checkpoint import save_training
from bertkit.config import BertConfig
from bertkit.distributed import Dist, all_reduce, barrier, cpu_has_fast_bf16, unwrap
from bertkit.flags import PRECISIONS
from bertkit.optim import clips_gradients
from bertkit.stream import Stream, to_device


@dataclass
class LoopConfig:
    total_steps: int  # optimizer steps to reach (counting steps done before a resume)
    lr: float  # peak learning rate
    schedule: Callable[[int], float]  # step -> multiplier of lr
    accumulation: int = 1  # micro-batches per optimizer step
    precision: str = "fp32"  # fp32, bf16 (autocast, fp32 master weights) or fp16 (autocast + loss scaling)
    max_grad_norm: float | None = 1.0  # global-norm clipping here, unless the optimizer clips itself
    save_every: int = 0  # checkpoint every N steps (0: only at the end)
    log_every: int = 10  # log line every N steps
    eval_every: int = 0  # evaluate every N steps (0: only at the end, if an eval function is given)
    seed: int = 12345
    sync_each_micro_step: bool = False  # all-reduce gradients after every micro-batch (seed flag allreduce_post_accumulation=False)
    skip_nonfinite: bool = False  # skip and count steps with a non-finite loss instead of stopping
    fp32_modules: tuple[str, ...] = ()  # module-name patterns run outside autocast (the seed's bf16 config)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise BertkitError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.accumulation < 1:
            raise BertkitError(f"accumulation steps must be >= 1, got {self.accumulation}")
        if self.total_steps < 0:
            raise BertkitError(f"number of training steps must be >= 0, got {self.total_steps}")


@dataclass
class Checkpointer:
    """Where and how training checkpoints are written (rank 0 writes; all ranks wait)."""

    output_dir: Path
    config: BertConfig
    vocab_file: Path
    lowercase: bool = True
    keep_last: int = 3
    run: dict = field(default_factory=dict)  # the run's identity, stored with each checkpoint

    def save(self, d: Dist, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
             scaler_state: dict | None = None) -> Path:
        folder = None
        if d.is_main:
            state = {k: v.float() if v.is_floating_point() else v for k, v in unwrap(model).state_dict().items()}
            trainer = {"run": self.run, "grad_scaler": scaler_state}
            folder = save_training(self.output_dir, step, self.config, state, self.vocab_file,
                                   self.lowercase, optimizer.state_dict(), trainer, self.keep_last)
        barrier()
        return folder


class RunLog:
    """JSON-lines log, progress bar and TensorBoard, on the main process only."""

    def __init__(self, path: Path | None, is_main: bool, total: int, initial: int = 0,
                 tensorboard_dir: Path | None = None, desc: str = "train"):
        self.is_main = is_main
        self.file = None
        self.bar = None
        self.tb = None
        if not is_main:
            return
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a", buffering=1)
        from tqdm import tqdm

        self.tty = sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                        disable=not self.tty, file=sys.stderr)
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(tensorboard_dir))
            except ImportError:
                pass  # TensorBoard is optional: the JSON log has everything

    def record(self, rec: dict) -> None:
        if not self.is_main:
            return
        if self.file:
            try:
                self.file.write(json.dumps(rec) + "\n")
            except OSError as e:  # name the log in the error (a write to a full disk has no file name)
                raise OSError(e.errno, e.strerror, self.file.name) from None
        if self.tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, rec.get("step", 0))
        shown = {k: v for k, v in rec.items() if k in ("loss", "seq_per_s", "lr") or k.startswith("eval_")}
        if self.tty:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)
        else:
            self.print("  ".join([f"step {rec.get('step')}"] + [f"{k} {v:.4g}" for k, v in shown.items()]))

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def print(self, msg: str) -> None:
        if not self.is_main:
            return
        if self.bar is not None and self.tty:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def dropout_seed(seed: int, global_micro_batch: int) -> int:
    return (seed * 1_000_003 + global_micro_batch * 7919 + 17) % (2**63 - 1)


def keep_fp32(model: nn.Module, patterns: tuple[str, ...], device_type: str) -> list[str]:
    """Run the modules whose names match `patterns` (fnmatch) outside autocast, in fp32. Returns the
    names matched; a pattern that matches nothing is an error, so a typo is never ignored."""
    matched = []
    for pattern in patterns:
        hits = [(n, m) for n, m in model.named_modules() if n and fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise BertkitError(f"bf16 config: pattern {pattern!r} matches no module of the model")
        for name, module in hits:
            matched.append(name)
            forward = module.forward

            def fp32_forward(*args, _forward=forward, **kwargs):
                args = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
                with torch.autocast(device_type, enabled=False):
                    return _forward(*args, **kwargs)

            module.forward = fp32_forward
    return matched


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


class StopFlag:
    """Set by SIGTERM (Kubernetes preemption, torchrun shutting down): the loop finishes its step,
    saves a checkpoint and raises Stopped. Enter it as early as the command starts, so a signal that
    comes while data and model load is not lost."""

    def __init__(self):
        self.set = False
        self._old = None

    def __enter__(self) -> "StopFlag":
        import threading

        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.set = True

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


class Stopped(Exception):
    """Training stopped early on SIGTERM after saving a checkpoint."""

    def __init__(self, step: int, folder: Path | None):
        super().__init__(f"stopped by SIGTERM at step {step}; checkpoint {folder}; run the same command to resume")
        self.step, self.folder = step, folder


def fit(model: nn.Module, optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[nn.Module, dict], tuple[torch.Tensor, dict[str, torch.Tensor]]],
        stream: Stream, cfg: LoopConfig, d: Dist, log: RunLog, ckpt: Checkpointer | None = None,
        start_step: int = 0, eval_fn: Callable[[nn.Module], dict] | None = None,
        grad_scaler_state: dict | None = None, stop: StopFlag | None = None) -> dict:
    """Train from `start_step` to `cfg.total_steps`. `loss_fn(model, batch)` returns the mean loss of
    the micro-batch and a dict of scalar metrics (means over the micro-batch). Returns the last
    logged record (with the final evaluation when `eval_fn` is given)."""
    accum = cfg.accumulation
    if cfg.precision == "bf16" and d.device.type == "cpu" and not cpu_has_fast_bf16():
        log.print("warning: this CPU has no bf16 matrix instructions (AVX512-BF16 or AMX), so bf16 runs "
                  "far slower than fp32 here; prefer --precision fp32 on this machine")
    clips_itself = clips_gradients(optimizer)
    scaler = torch.amp.GradScaler(d.device.type, enabled=cfg.precision == "fp16")
    if grad_scaler_state:
        scaler.load_state_dict(grad_scaler_state)
    if cfg.fp32_modules and cfg.precision != "fp32":
        keep_fp32(unwrap(model), cfg.fp32_modules, d.device.type)
    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    batches = contextlib.closing(stream.iterate(start_step * accum))
    model.train()
    window: dict[str, torch.Tensor] = {}
    seqs = tokens = window_steps = skipped = 0
    t0 = time.perf_counter()
    last: dict = {}
    step = start_step
    with batches as batches, contextlib.nullcontext(stop) if stop is not None else StopFlag() as stop:
        while step < cfg.total_steps:
            lr = cfg.lr * cfg.schedule(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=d.device)
            step_metrics: dict[str, torch.Tensor] = {}
            for micro in range(accum):
                batch = next(batches)
                seqs += len(next(iter(batch.values()))) * d.world_size
                mask = batch.get("input_mask", batch.get("attention_mask"))
                tokens += (int(mask.sum()) if mask is not None else batch["input_ids"].numel()) * d.world_size
                batch = to_device(batch, d.device)
                torch.manual_seed(dropout_seed(cfg.seed, (step * accum + micro) * d.world_size + d.rank))
                no_sync = ddp and micro < accum - 1 and not cfg.sync_each_micro_step
                with model.no_sync() if no_sync else contextlib.nullcontext():
                    with autocast(cfg.precision, d.device):
                        loss, metrics = loss_fn(model, batch)
                    scaler.scale(loss / accum).backward()
                loss_sum += loss.detach().float()
                for k, v in metrics.items():
                    step_metrics[k] = step_metrics.get(k, 0) + v.detach().float() / accum
            # One small all-reduce per step: ranks agree on the loss, and on stopping.
            shared = all_reduce(torch.stack([loss_sum / accum, torch.tensor(float(stop.set), device=d.device)]))
            step_loss, stop_now = (shared[0] / d.world_size).item(), shared[1].item() > 0
            grad_norm = None
            if not math.isfinite(step_loss):
                if not cfg.skip_nonfinite:
                    raise BertkitError(f"non-finite loss ({step_loss}) at step {step + 1}; stopping without "
                                       f"saving it (pass --skip_nonfinite to skip such steps)")
                # The weights stay as they were; the step still counts, so checkpoints keep their schedule.
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                log.print(f"warning: non-finite loss at step {step + 1}: step skipped ({skipped} so far)")
            else:
                if scaler.is_enabled():
                    scaler.unscale_(optimizer)
                if not clips_itself and cfg.max_grad_norm:
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                if grad_norm is None:
                    grad_norm = getattr(optimizer, "last_grad_norm", None)
                for k, v in step_metrics.items():
                    window[k] = window.get(k, 0) + v
                window["loss"] = window.get("loss", 0) + step_loss
                window_steps += 1
            step += 1
            log.advance()

            if window_steps and (step % cfg.log_every == 0 or step == cfg.total_steps):
                elapsed = time.perf_counter() - t0
                rec = {"step": step, "lr": lr}
                for k, v in window.items():
                    v = torch.as_tensor(v, dtype=torch.float32, device=d.device)
                    if k != "loss":
                        v = all_reduce(v.clone()) / d.world_size
                    rec[k] = round(v.item() / window_steps, 6)
                if grad_norm is not None:
                    rec["grad_norm"] = round(float(grad_norm), 6)
                rec.update(seq_per_s=round(seqs / elapsed, 2), tokens_per_s=round(tokens / elapsed, 1))
                if skipped:
                    rec["skipped_steps"] = skipped
                log.record(rec)
                last = rec
                window, seqs, tokens, window_steps, t0 = {}, 0, 0, 0, time.perf_counter()

            if eval_fn is not None and cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.total_steps:
                last = {**last, **_evaluate(eval_fn, model, step, log, cfg.precision, d.device)}
                model.train()
            if stop_now:
                folder = ckpt.save(d, step, model, optimizer, scaler.state_dict()) if ckpt else None
                log.print(f"SIGTERM: saved step {step} to {folder}")
                raise Stopped(step, folder)
            if ckpt is not None and cfg.save_every and step % cfg.save_every == 0 and step < cfg.total_steps:
                ckpt.save(d, step, model, optimizer, scaler.state_dict())
    if ckpt is not None and step > start_step:
        ckpt.save(d, step, model, optimizer, scaler.state_dict())
    if eval_fn is not None:
        last = {**last, **_evaluate(eval_fn, model, step, log, cfg.precision, d.device)}
    if skipped:
        last["skipped_steps"] = skipped
    return last


def _evaluate(eval_fn, model: nn.Module, step: int, log: RunLog, precision: str, device: torch.device) -> dict:
    model.eval()
    with torch.no_grad(), autocast(precision, device):
        result = eval_fn(model)
    rec = {"step": step, **{f"eval_{k}": v for k, v in result.items()}}
    log.record(rec)
    return rec
