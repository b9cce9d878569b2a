"""The frame of benchmarks/gpu_check.py: what it carries to the GPU machine, the time guard that
runs a part only while it still fits, and the report (JSON rewritten after every part, so a run
cut short still leaves what it finished; a table at the end)."""

from __future__ import annotations

import json
import math
import os
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# What benchmarks/gpu_carry.sh copies from ../shared into the repository, since only the working
# tree travels to the GPU machine. The fixture's Google checkpoint goes as the bertkit folder it
# converts to: reading the TensorFlow format needs google-crc32c, which that machine lacks.
CARRY_DIR = ".gpu_carry"
CARRY_FILES = (
    "fixture_model/bert_config.json",
    "fixture_model/bertkit.json",
    "fixture_model/model.safetensors",
    "fixture_model/vocab.txt",
    "reference_outputs.npz",
)
CARRY_LIMIT_BYTES = 64 * 2**20  # what one call may carry in all


def missing_carry(root: str | os.PathLike) -> list[str]:
    """The carried files absent under `root` (the repository), in CARRY_FILES order."""
    return [name for name in CARRY_FILES if not (Path(root) / CARRY_DIR / name).is_file()]


class PartTimeout(Exception):
    """A part ran past the time left to the whole check."""


@dataclass
class Budget:
    """Seconds for the whole check, counted from construction. `reserve_s` is kept back for the
    final table and JSON."""

    total_s: float
    reserve_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    start: float = field(default=-1.0)

    def __post_init__(self) -> None:
        if self.start < 0:
            self.start = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        """Seconds a part may still use."""
        return self.total_s - self.reserve_s - self.elapsed()

    def fits(self, estimate_s: float) -> bool:
        return estimate_s <= self.left()


@dataclass
class Part:
    name: str
    run: Callable[[], dict]  # returns the part's numbers; `ok` in it makes the part a check
    estimate_s: float  # what it takes, start to end; a part is skipped when it no longer fits
    skip: str | None = None  # a reason to skip it whatever the time (recorded in its place)


class Report:
    """The JSON report at `path`, rewritten (to a temporary name, then renamed) after every part."""

    def __init__(self, path: str | os.PathLike, meta: dict):
        self.path = Path(path)
        self.data: dict = {"meta": meta, "parts": {}}
        self.write()

    def add(self, name: str, result: dict) -> None:
        self.data["parts"][name] = result
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=_plain) + "\n")
        os.replace(tmp, self.path)


def _plain(x):
    """JSON for numbers that are not Python's own (numpy, 0-d tensors)."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)


def _raise_timeout(signum, frame):
    raise PartTimeout("ran past the time left to the check")


def run_parts(parts: list[Part], budget: Budget, report: Report, log=print,
              after: Callable[[], None] | None = None) -> None:
    """Run each part that still fits, under an alarm at the end of the budget; record skipped
    parts with the reason, and errors (with their last lines) without stopping the rest. `after`
    runs after every part (freeing GPU memory)."""
    for part in parts:
        left = budget.left()
        if part.skip or not budget.fits(part.estimate_s):
            result = {"status": "skipped",
                      "why": part.skip or f"needs about {part.estimate_s:.0f} s, {max(left, 0):.0f} s left"}
            report.add(part.name, result)
            log(f"{part.name}: skipped ({result['why']})")
            continue
        t0 = time.monotonic()
        old = signal.signal(signal.SIGALRM, _raise_timeout)
        signal.setitimer(signal.ITIMER_REAL, max(left, 1.0))
        try:
            result = dict(part.run())
            result["status"] = ("ok" if result["ok"] else "FAIL") if "ok" in result else result.get("status", "measured")
        except PartTimeout as e:
            result = {"status": "error", "why": str(e)}
        except Exception as e:  # noqa: BLE001 - one broken part must not hide the others
            tail = traceback.format_exc().strip().splitlines()[-3:]
            result = {"status": "error", "why": f"{type(e).__name__}: {str(e)[:300]}", "traceback": tail}
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        result["seconds"] = round(time.monotonic() - t0, 2)
        report.add(part.name, result)
        log(f"{part.name}: {result['status']} in {result['seconds']} s  {result.get('summary', result.get('why', ''))}")
        if after is not None:
            after()


def table(report_data: dict) -> str:
    """The parts as a Markdown table: name, status, seconds, and each part's summary or reason."""
    rows = ["| part | status | s | result |", "| --- | --- | ---: | --- |"]
    for name, r in report_data["parts"].items():
        text = r.get("summary") or r.get("why") or ""
        seconds = r.get("seconds")
        rows.append(f"| {name} | {r.get('status', '?')} | {'' if seconds is None else seconds} | {text} |")
    return "\n".join(rows)


def failed(report_data: dict) -> list[str]:
    """Parts that ran and did not pass (FAIL or error); skipped parts are not failures."""
    return [n for n, r in report_data["parts"].items() if r.get("status") in ("FAIL", "error")]


def fmt(x: float, digits: int = 3) -> str:
    """A short number for the table: 3 significant digits, exponent form when small."""
    if x is None or not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}g}"
