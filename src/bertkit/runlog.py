"""What a training run reports: a JSON-lines log, a progress bar and TensorBoard (and, with the
seed's --dllog_path, NVIDIA dllogger's stream), written on the main process only; the training
clock; and the meter that turns the steps between two records into means, throughput and MFU.

Every record carries `wall_s`, the wall-clock seconds since the log was opened (in this process,
once the model is built; evaluation included). The loop's records also carry `train_s`, the seconds spent in
training steps, evaluation left out and carried over a resume (see `Clock`)."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from bertkit.distributed import Dist, all_reduce
from bertkit.dllog import DLLog

SHOWN = ("loss", "seq_per_s", "mfu", "lr")  # what the progress bar shows, with every eval_* value


class RunLog:
    """JSON-lines log, progress bar and TensorBoard, on the main process only."""

    def __init__(self, path: Path | None, is_main: bool, total: int, initial: int = 0,
                 tensorboard_dir: Path | None = None, desc: str = "train", dllog_path: str | None = None,
                 parameters: dict | None = None):
        self.is_main = is_main
        self.file = None
        self.bar = None
        self.tb = None
        self.dllog = None
        self.started = time.perf_counter()
        if not is_main:
            return
        if dllog_path:  # the seed's --dllog_path: dllogger's format, beside log.jsonl
            self.dllog = DLLog(dllog_path, parameters or {})
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a", buffering=1)
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
        rec = {**rec, "wall_s": round(time.perf_counter() - self.started, 3)}
        if self.file:
            try:
                self.file.write(json.dumps(rec) + "\n")
            except OSError as e:  # name the log in the error (a write to a full disk has no file name)
                raise OSError(e.errno, e.strerror, self.file.name) from None
        if self.dllog is not None:
            self.dllog.log(rec.get("step", ()), {k: v for k, v in rec.items() if k != "step"})
        if self.tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, rec.get("step", 0))
        shown = {k: v for k, v in rec.items() if k in SHOWN or k.startswith("eval_")}
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

    def close(self, summary: dict | None = None) -> None:
        """`summary`: the run's final numbers, for the dllog (its step [] record)."""
        if self.dllog is not None:
            if summary:
                self.dllog.log((), summary)
            self.dllog.close()
        if self.bar is not None:
            self.bar.close()
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


class Clock:
    """Training seconds: time since `start()` with the time inside `paused()` (evaluation) left out,
    plus `carried`, the training seconds of the run before a resume. `this_run()` leaves out the
    carried part: what --max_seconds compares with its budget."""

    def __init__(self, carried: float = 0.0):
        self.carried = carried
        self.start()

    def start(self) -> None:
        self.started = time.perf_counter()
        self.excluded = 0.0
        self.stopped: float | None = None

    def stop(self) -> None:
        """The end of training: the time after it (the last checkpoint, the final evaluation) is not counted."""
        self.stopped = time.perf_counter()

    def this_run(self) -> float:
        end = self.stopped if self.stopped is not None else time.perf_counter()
        return end - self.started - self.excluded

    def train_s(self) -> float:
        return self.carried + self.this_run()

    @contextlib.contextmanager
    def paused(self):
        t = time.perf_counter()
        try:
            yield
        finally:
            if self.stopped is None:
                self.excluded += time.perf_counter() - t


class Meter:
    """What the log reports between two records: loss and metric sums over the steps taken, and the
    sequences, real tokens and (with `flops`, a function of a batch) training FLOPs seen on all
    ranks, for the throughput and the MFU against `peak_flops` (FLOP/s of one device). Its time is
    the clock's training time: an evaluation between two records does not lower the throughput."""

    def __init__(self, clock: Clock, flops: Callable[[dict], float] | None = None,
                 peak_flops: float | None = None) -> None:
        self.clock, self.flops_of, self.peak_flops = clock, flops, peak_flops
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor | float] = {}
        self.steps = self.seqs = self.tokens = 0
        self.flops = 0.0
        self.started = self.clock.train_s()

    def count(self, batch: dict, world_size: int) -> None:
        self.seqs += len(next(iter(batch.values()))) * world_size
        mask = batch.get("input_mask", batch.get("attention_mask"))
        self.tokens += (int(mask.sum()) if mask is not None else batch["input_ids"].numel()) * world_size
        if self.flops_of is not None:
            self.flops += self.flops_of(batch) * world_size

    def add(self, loss: float, metrics: dict[str, torch.Tensor]) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0) + v
        self.sums["loss"] = self.sums.get("loss", 0) + loss
        self.steps += 1

    def record(self, step: int, lr: float, d: Dist, grad_norm: float | None, skipped: int) -> dict:
        """The means since the last record (metrics averaged over ranks), then start a new window."""
        now = self.clock.train_s()
        elapsed = max(now - self.started, 1e-9)
        rec = {"step": step, "lr": lr}
        for k, v in self.sums.items():
            v = torch.as_tensor(v, dtype=torch.float32, device=d.device)
            if k != "loss":  # the loss is already the mean over ranks
                v = all_reduce(v.clone()) / d.world_size
            rec[k] = round(v.item() / self.steps, 6)
        if grad_norm is not None:
            rec["grad_norm"] = round(grad_norm, 6)
        rec.update(seq_per_s=round(self.seqs / elapsed, 2), tokens_per_s=round(self.tokens / elapsed, 1))
        if self.flops_of is not None and self.peak_flops:
            rec["mfu"] = round(mfu(self.flops, elapsed, self.peak_flops, d.world_size), 4)
        rec["train_s"] = round(now, 3)
        if skipped:
            rec["skipped_steps"] = skipped
        self.reset()
        return rec


def mfu(flops: float, seconds: float, peak_flops: float, devices: int = 1) -> float:
    """Model FLOPs utilisation: the FLOP/s achieved as a share of the devices' peak."""
    return flops / seconds / (peak_flops * devices)
