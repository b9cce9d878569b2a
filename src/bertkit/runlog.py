"""What a training run reports: a JSON-lines log, a progress bar and TensorBoard (and, with the
seed's --dllog_path, NVIDIA dllogger's stream), written on the main process only."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm

from bertkit.dllog import DLLog


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
