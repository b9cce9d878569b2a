"""`bertkit plot LOG [LOG ...] -o curve.png`: the loss curves of training logs (log.jsonl), with
evaluation points where the log has them. Needs matplotlib (`pip install 'bertkit[plot]'`)."""

from __future__ import annotations

import json
from pathlib import Path

from bertkit import BertkitError


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


def main(argv: list[str]) -> int:
    from bertkit.flags import ArgumentParser, flag, parse_bool

    p = ArgumentParser(prog="bertkit plot", description=__doc__)
    p.add_argument("logs", nargs="+", help="log.jsonl files of training runs.")
    p.add_argument("-o", "--output", default="curve.png", help="Image to write (PNG, SVG or PDF).")
    p.add_argument("--keys", nargs="+", default=["loss", "mlm_loss", "eval_mlm_loss", "eval_loss"],
                   help="Fields to draw where present.")
    flag(p, "overwrite", type=parse_bool, default=True, help=(
        "Replace --output if it exists (default; `--overwrite false` refuses to). Takes the forms of every "
        "command: `--overwrite`, `--overwrite true`."))
    args = p.parse_args(argv)
    if Path(args.output).exists() and not args.overwrite:
        raise BertkitError(f"{args.output}: already exists (--overwrite false was given)")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BertkitError("bertkit plot needs matplotlib: pip install 'bertkit[plot]'") from None
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = 0
    for log in args.logs:
        records = read_log(log)
        for key in args.keys:
            points = [(r["step"], r[key]) for r in records if key in r and "step" in r]
            if points:
                xs, ys = zip(*points)
                style = "o-" if key.startswith("eval_") else "-"
                ax.plot(xs, ys, style, markersize=3, label=f"{Path(log).parent.name}: {key}")
                drawn += 1
    if not drawn:
        raise BertkitError(f"none of {', '.join(args.keys)} is in {', '.join(args.logs)}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from bertkit.io import atomic_path

    with atomic_path(args.output) as tmp:
        fig.savefig(tmp, format=Path(args.output).suffix.lstrip(".") or "png", dpi=120)
    print(f"wrote {args.output}")
    return 0
