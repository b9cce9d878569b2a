"""Training speed on MRPC: one epoch of `bertkit finetune mrpc` against Hugging Face transformers'
`BertForSequenceClassification` in a plain PyTorch loop (finetune_mrpc.py's peer), same MiniLM, same
data, batch 32, batches padded to their own longest sequence on both sides. Reports each side's
epoch time (the training loop only), the median over `--repeats`, and the ratio.

    python benchmarks/finetune_throughput.py --json throughput.json
    python benchmarks/finetune_throughput.py --max_train_examples 640 --repeats 3 --parallel   # short

bertkit runs with its defaults (length-grouped batches for MRPC on small models); pass
`--ours_flags=--group_by_length=false` to compare the same random batches as the peer's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import finetune_mrpc as fm  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max_train_examples", type=int, default=None, help="Use the first N training rows (default all 3668).")
    p.add_argument("--repeats", type=int, default=1, help="Epochs timed per side; the median is reported.")
    p.add_argument("--lr", type=float, default=2e-5)
    fm.side_by_side_flags(p)
    args = p.parse_args(argv)
    precision = fm.pick_precision(args.precision)
    threads = 1 if args.parallel else args.threads
    times: dict[str, list[float]] = {"ours": [], "peer": []}
    steps = {}
    with tempfile.TemporaryDirectory(prefix="bench-tput-") as tmp:
        work = Path(args.workdir or tmp)
        data = fm.slice_data(fm.GLUE / "train.tsv", fm.GLUE / "dev.tsv", args.max_train_examples, work / "data")
        for r in range(args.repeats):
            (work / f"r{r}").mkdir(parents=True, exist_ok=True)
            res = fm.run_recipe(fm.minilm_dir(), data, work / f"r{r}", args.lr, 1.0, precision, threads,
                                args.parallel, ("ours", "peer"), 12345 + r, args.ours_flags.split())
            for side in times:
                times[side].append(res[side]["train_seconds"])
                steps[side] = res[side]["steps"]
            print(f"repeat {r}: ours {times['ours'][-1]:.1f} s, peer {times['peer'][-1]:.1f} s", flush=True)
    med = {side: statistics.median(v) for side, v in times.items()}
    ratio = med["peer"] / med["ours"]
    print(f"\nMRPC, one epoch ({steps['ours']} steps of 32), {precision}, threads {threads or 'default'}"
          f"{', sides in parallel' if args.parallel else ''}")
    print(f"{'side':<6} {'epoch s (median)':>17} {'s/step':>7} {'seq/s':>7}  runs")
    for side in ("ours", "peer"):
        n = steps[side] * 32
        print(f"{side:<6} {med[side]:>17.1f} {med[side] / steps[side]:>7.3f} {n / med[side]:>7.1f}  "
              + ", ".join(f"{t:.1f}" for t in times[side]))
    print(f"peer time / ours: {ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "precision": precision, "threads": threads, "parallel": args.parallel, "steps": steps,
            "max_train_examples": args.max_train_examples, "ours_flags": args.ours_flags, "cpu": fm._cpu(),
            "seconds": times, "median_seconds": med, "peer_over_ours": ratio}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
