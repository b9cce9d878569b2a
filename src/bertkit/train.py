"""The one training loop, shared by pretraining, MRPC and SQuAD: learning rate, micro-steps (no
gradient all-reduce until the last), unscale and clip, step, zero grads, log, evaluate, save; and
the one evaluation path (`infer`).

Everything a resume needs is a function of the step: the learning rate comes from the schedule,
the data position from the step (see stream.py), and the dropout generator is re-seeded from
(seed, global micro-batch) before every micro-step. So a checkpoint holds the weights, the
optimizer state and the step, and on a CPU a resumed run is bit-identical to an uninterrupted
one. On CUDA it is equal to rounding: some kernels there (scatter-add in backward passes, some
attention backward kernels) add in a varying order; benchmarks/gpu_check.py measures the difference.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from bertkit import BertkitError
from bertkit.checkpoint import load_training, load_weights, save_training
from bertkit.config import BertConfig
from bertkit.distributed import Dist, all_gather_objects, all_reduce, barrier, cpu_has_fast_bf16, unwrap
from bertkit.flags import PRECISIONS
from bertkit.optim import clips_gradients
from bertkit.runlog import Clock, Meter, RunLog
from bertkit.stream import Stream, to_device
from bertkit.task_record import TaskRecord


@dataclass
class LoopConfig:
    total_steps: int  # optimizer steps to reach (counting steps done before a resume)
    lr: float  # peak learning rate
    schedule: Callable[[int], float]  # step -> multiplier of lr
    accumulation: int = 1  # micro-batches per optimizer step
    precision: str = "fp32"  # fp32, bf16 (autocast, fp32 master weights) or fp16 (autocast + loss scaling)
    max_grad_norm: float | None = 1.0  # global-norm clipping here, unless the optimizer clips itself
    log_every: int = 10  # log line every N steps
    eval_every: int = 0  # evaluate every N steps (0: only at the end, if an eval function is given)
    seed: int = 12345
    sync_each_micro_step: bool = False  # all-reduce gradients after every micro-batch (seed flag allreduce_post_accumulation=False)
    skip_nonfinite: bool = False  # skip and count steps with a non-finite loss instead of stopping
    fp32_modules: tuple[str, ...] = ()  # module-name patterns run outside autocast (the seed's bf16 config)
    max_seconds: float | None = None  # stop after this many training seconds of this process (evaluation excluded)
    flops: Callable[[dict], float] | None = None  # training FLOPs of a batch (on the host, before it moves), for MFU
    peak_flops: float | None = None  # FLOP/s of one device, for MFU

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise BertkitError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.accumulation < 1:
            raise BertkitError(f"accumulation steps must be >= 1, got {self.accumulation}")
        if self.total_steps < 0:
            raise BertkitError(f"number of training steps must be >= 0, got {self.total_steps}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise BertkitError(f"--max_seconds must be > 0, got {self.max_seconds}")


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


@dataclass
class CheckpointManager:
    """A run's training checkpoints: saved every `every` steps (0: only at the end) and when asked,
    the newest `keep` kept (0 keeps all), loaded back for a resume. Rank 0 writes; all ranks wait."""

    output_dir: Path
    config: BertConfig
    vocab_file: Path
    lowercase: bool = True
    run: dict = field(default_factory=dict)  # the run's identity, stored with each checkpoint
    every: int = 0
    keep: int = 3
    task: TaskRecord | None = None  # a fine-tuned head's task record, saved as each checkpoint's task.json
    train_s: float = 0.0  # training seconds of the checkpoint last loaded (0 for a fresh start)

    def due(self, step: int, total_steps: int) -> bool:
        """A checkpoint is due at every `every`-th step before the last (the last is always saved)."""
        return bool(self.every) and step % self.every == 0 and step < total_steps

    def save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, scaler_state: dict | None,
             d: Dist, train_s: float = 0.0) -> Path | None:
        folder = None
        if d.is_main:
            state = {k: v.float() if v.is_floating_point() else v for k, v in unwrap(model).state_dict().items()}
            trainer = {"run": self.run, "grad_scaler": scaler_state, "train_s": round(train_s, 3)}
            folder = save_training(self.output_dir, step, self.config, state, self.vocab_file,
                                   self.lowercase, optimizer.state_dict(), trainer, self.keep, task=self.task)
        barrier()
        return folder

    def load(self, folder: Path, model: nn.Module) -> tuple[int, dict, dict | None]:
        """Load a checkpoint's weights into `model`: (step, optimizer state, grad-scaler state)."""
        _, state, optimizer_state, trainer = load_training(folder)
        load_weights(model, state, str(folder))
        self.train_s = float(trainer.get("train_s", 0.0))
        return trainer["step"], optimizer_state, trainer.get("grad_scaler")


def accumulate(model: nn.Module, loss_fn: Callable, batches, scaler: torch.amp.GradScaler, cfg: LoopConfig,
               d: Dist, step: int, stop: StopFlag, meter: Meter, clock: Clock
               ) -> tuple[float, dict[str, torch.Tensor], str | None]:
    """Forward and backward over one step's micro-batches: (mean loss over ranks, metric means of
    this rank, why the run stops after this step: "sigterm" when any rank was asked to stop,
    "max_seconds" when any rank's training time has reached the budget, else None)."""
    accum = cfg.accumulation
    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    loss_sum = torch.zeros((), device=d.device)
    metrics: dict[str, torch.Tensor] = {}
    for micro in range(accum):
        batch = next(batches)
        meter.count(batch, d.world_size)
        batch = to_device(batch, d.device)
        torch.manual_seed(dropout_seed(cfg.seed, (step * accum + micro) * d.world_size + d.rank))
        no_sync = ddp and micro < accum - 1 and not cfg.sync_each_micro_step
        with model.no_sync() if no_sync else contextlib.nullcontext():
            with autocast(cfg.precision, d.device):
                loss, parts = loss_fn(model, batch)
            scaler.scale(loss / accum).backward()
        loss_sum += loss.detach().float()
        for k, v in parts.items():
            metrics[k] = metrics.get(k, 0) + v.detach().float() / accum
    over = cfg.max_seconds is not None and clock.this_run() >= cfg.max_seconds
    # One small all-reduce per step: ranks agree on the loss, and on stopping.
    flags = torch.tensor([float(stop.set), float(over)], device=d.device)
    shared = all_reduce(torch.cat([(loss_sum / accum).reshape(1), flags]))
    why = "sigterm" if shared[1].item() > 0 else "max_seconds" if shared[2].item() > 0 else None
    return (shared[0] / d.world_size).item(), metrics, why


def update(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
           max_grad_norm: float | None) -> float | None:
    """Unscale, clip (unless the optimizer clips itself), step, zero the gradients; the gradient
    norm before clipping when one was measured."""
    if scaler.is_enabled():
        scaler.unscale_(optimizer)
    grad_norm = None
    if not clips_gradients(optimizer) and max_grad_norm:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if grad_norm is None:
        grad_norm = getattr(optimizer, "last_grad_norm", None)
    return None if grad_norm is None else float(grad_norm)


def fit(model: nn.Module, optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[nn.Module, dict], tuple[torch.Tensor, dict[str, torch.Tensor]]],
        stream: Stream, cfg: LoopConfig, d: Dist, log: RunLog, ckpt: CheckpointManager | None = None,
        start_step: int = 0, eval_fn: Callable[[nn.Module], dict] | None = None,
        grad_scaler_state: dict | None = None, stop: StopFlag | None = None) -> dict:
    """Train from `start_step` to `cfg.total_steps`, or until `cfg.max_seconds` of training in this
    call (checkpoint, final evaluation and `stopped_by: max_seconds` in the result; the same command
    continues). `loss_fn(model, batch)` returns the mean loss of the micro-batch and a dict of
    scalar metrics (means over the micro-batch). Returns the last logged record (with the final
    evaluation when `eval_fn` is given)."""
    if cfg.precision == "bf16" and d.device.type == "cpu" and not cpu_has_fast_bf16():
        log.print("warning: this CPU has no bf16 matrix instructions (AVX512-BF16 or AMX), so bf16 runs "
                  "far slower than fp32 here; prefer --precision fp32 on this machine")
    scaler = torch.amp.GradScaler(d.device.type, enabled=cfg.precision == "fp16")
    if grad_scaler_state:
        scaler.load_state_dict(grad_scaler_state)
    if cfg.fp32_modules and cfg.precision != "fp32":
        keep_fp32(unwrap(model), cfg.fp32_modules, d.device.type)
    model.train()
    clock = Clock(carried=ckpt.train_s if ckpt is not None and start_step else 0.0)
    meter, last, skipped, step, why = Meter(clock, cfg.flops, cfg.peak_flops), {}, 0, start_step, None
    evaluate = lambda: log_evaluation(eval_fn, model, step, log, clock)  # noqa: E731
    batches = contextlib.closing(stream.iterate(start_step * cfg.accumulation))
    with batches as batches, contextlib.nullcontext(stop) if stop is not None else StopFlag() as stop:
        clock.start()
        while step < cfg.total_steps and why is None:
            lr = cfg.lr * cfg.schedule(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, metrics, why = accumulate(model, loss_fn, batches, scaler, cfg, d, step, stop, meter, clock)
            grad_norm = None
            if math.isfinite(loss):
                grad_norm = update(model, optimizer, scaler, cfg.max_grad_norm)
                meter.add(loss, metrics)
            elif cfg.skip_nonfinite:  # the weights stay; the step still counts, so checkpoints keep their schedule
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                log.print(f"warning: non-finite loss at step {step + 1}: step skipped ({skipped} so far)")
            else:
                raise BertkitError(f"non-finite loss ({loss}) at step {step + 1}; stopping without "
                                   f"saving it (pass --skip_nonfinite to skip such steps)")
            step += 1
            log.advance()
            if meter.steps and (step % cfg.log_every == 0 or step == cfg.total_steps or why):
                last = meter.record(step, lr, d, grad_norm, skipped)
                log.record(last)
            if eval_fn is not None and cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.total_steps \
                    and why is None:
                last = {**last, **evaluate()}
            if why == "sigterm":
                folder = ckpt.save(step, model, optimizer, scaler.state_dict(), d, clock.train_s()) if ckpt else None
                log.print(f"SIGTERM: saved step {step} to {folder}")
                raise Stopped(step, folder)
            if ckpt is not None and ckpt.due(step, cfg.total_steps) and why is None:
                ckpt.save(step, model, optimizer, scaler.state_dict(), d, clock.train_s())
    clock.stop()
    train_s = clock.train_s()
    folder = ckpt.save(step, model, optimizer, scaler.state_dict(), d, train_s) \
        if ckpt is not None and step > start_step else None
    if why == "max_seconds":
        log.print(f"--max_seconds {cfg.max_seconds:g}: the time budget ended the run at step {step} of "
                  f"{cfg.total_steps} after {clock.this_run():.1f} s of training; saved {folder}; the same "
                  f"command continues from there")
    if eval_fn is not None:
        last = {**last, **evaluate()}
    return {**last, "train_s": round(train_s, 3), **({"skipped_steps": skipped} if skipped else {}),
            **({"stopped_by": why} if why else {})}


def log_evaluation(eval_fn: Callable[[nn.Module], dict], model: nn.Module, step: int, log: RunLog,
                   clock: Clock | None = None) -> dict:
    """`eval_fn(model)` (which runs `infer`) as an `eval_*` record of the log, its time left out of
    `clock`'s training time (the record carries the training seconds so far); training mode after."""
    trained = {"train_s": round(clock.train_s(), 3)} if clock is not None else {}
    with clock.paused() if clock is not None else contextlib.nullcontext():
        rec = {"step": step, **{f"eval_{k}": v for k, v in eval_fn(model).items()}, **trained}
        log.record(rec)
        model.train()
    return rec


def infer(model: nn.Module, items: Sequence, collate: Callable, forward: Callable[[nn.Module, dict], list],
          batch_size: int, d: Dist, precision: str, length: Callable = lambda item: len(item.input_ids),
          progress: Callable[[int], object] | None = None) -> list:
    """`forward(model, batch)` (one output per item) over every item, in item order, on all ranks
    together, in evaluation mode without gradients. The batches are fixed before they are dealt to
    the ranks (items sorted by `length`, then cut), so each item meets the same batch whatever the
    number of processes, and the outputs are identical bit for bit. `progress(n)` is told of each
    batch this rank has done, with its n items and those of the other ranks' batches in that round."""
    net = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    order = sorted(range(len(items)), key=lambda i: length(items[i]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    mine = {}
    net.eval()
    with torch.no_grad(), autocast(precision, d.device):
        for start in range(0, len(batches), d.world_size):
            dealt = batches[start:start + d.world_size]
            if d.rank < len(dealt):
                b = dealt[d.rank]
                batch = to_device(collate([items[i] for i in b]), d.device)
                mine.update(zip(b, forward(net, batch)))
            if progress is not None:
                progress(sum(map(len, dealt)))
    merged: dict = {}
    for part in all_gather_objects(mine):
        merged.update(part)
    return [merged[i] for i in range(len(items))]
