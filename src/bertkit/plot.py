"""`bertkit plot LOG [LOG ...] -o curve.png`: the curves of training logs (log.jsonl): losses, and
the accuracies of the evaluations where the log has them (`eval_mlm_accuracy` of `pretrain
--do_eval --eval_every N`), against steps and against training seconds (`train_s`: evaluation left
out). Needs matplotlib (`pip install 'bertkit[plot]'`)."""

from __future__ import annotations

import json
from pathlib import Path

from bertkit import BertkitError

KEYS = ["loss", "mlm_loss", "eval_mlm_loss", "eval_loss", "eval_mlm_accuracy", "eval_accuracy"]
AXES = {"step": "step", "seconds": "train_s", "wall": "wall_s"}  # --x choice: the log field
LABELS = {"step": "step", "train_s": "training seconds (evaluation excluded)", "wall_s": "wall-clock seconds"}


def read_log(path: str | Path) -> list[dict]:
    records = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise BertkitError(f"{path}: cannot read ({e.strerror})") from None
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                raise BertkitError(f"{path}:{n}: not a JSON line") from None
    return records


def is_accuracy(key: str) -> bool:
    return "acc" in key


def main(argv: list[str]) -> int:
    from bertkit.flags import ArgumentParser, flag, parse_bool

    p = ArgumentParser(prog="bertkit plot", description=__doc__)
    p.add_argument("logs", nargs="+", help="log.jsonl files of training runs.")
    p.add_argument("-o", "--output", default="curve.png", help="Image to write (PNG, SVG or PDF).")
    p.add_argument("--keys", nargs="+", default=KEYS,
                   help="Fields to draw where present; accuracies (names with 'acc') get a panel of their own.")
    p.add_argument("--x", nargs="+", choices=sorted(AXES), default=["step", "seconds"], help=(
        "Horizontal axes, a column each: step, seconds (training time, evaluation excluded) or wall "
        "(wall-clock time since the run started). Default: step and seconds (seconds where the log has them)."))
    flag(p, "overwrite", type=parse_bool, default=True, help=(
        "Replace --output if it exists (default; `--overwrite false` refuses to). Takes the forms of every "
        "command: `--overwrite`, `--overwrite true`."))
    args = p.parse_args(argv)
    if Path(args.output).exists() and not args.overwrite:
        raise BertkitError(f"{args.output}: already exists (--overwrite false was given)")
    logs = {log: read_log(log) for log in args.logs}
    present = [k for k in args.keys if any(k in r for records in logs.values() for r in records)]
    if not present:
        raise BertkitError(f"none of {', '.join(args.keys)} is in {', '.join(args.logs)}")
    xs = [AXES[x] for x in dict.fromkeys(args.x) if any(AXES[x] in r for records in logs.values() for r in records)]
    if not xs:
        raise BertkitError(f"no record of {', '.join(args.logs)} has {' or '.join(AXES[x] for x in args.x)}")
    rows = [keys for keys in ([k for k in present if not is_accuracy(k)], [k for k in present if is_accuracy(k)])
            if keys]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BertkitError("bertkit plot needs matplotlib: pip install 'bertkit[plot]'") from None
    fig, axes = plt.subplots(len(rows), len(xs), figsize=(6 * len(xs), 3.6 * len(rows)), squeeze=False)
    for i, keys in enumerate(rows):
        for j, x in enumerate(xs):
            ax = axes[i][j]
            for log, records in logs.items():
                for key in keys:
                    points = [(r[x], r[key]) for r in records if key in r and x in r]
                    if points:
                        ax.plot(*zip(*points), "o-" if key.startswith("eval_") else "-", markersize=3,
                                label=f"{Path(log).parent.name}: {key}")
            ax.set_xlabel(LABELS[x])
            ax.set_ylabel("accuracy" if is_accuracy(keys[0]) else "loss")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    from bertkit.io import atomic_path

    with atomic_path(args.output) as tmp:
        fig.savefig(tmp, format=Path(args.output).suffix.lstrip(".") or "png", dpi=120)
    print(f"wrote {args.output}")
    return 0
