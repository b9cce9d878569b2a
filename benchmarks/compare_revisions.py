"""The same pretraining benchmark at several git revisions of bertkit, alternated, to show whether a
change made a step slower. Each round runs `benchmarks/pretrain_throughput.py` of every revision in
turn (its own worktree, its own `src`), so the revisions share the machine's ups and downs; the
table gives the median over rounds of bertkit's seq/s and of its ratio to the peer measured in the
same process (the ratio is the steadier number on a busy machine).

    python benchmarks/compare_revisions.py bbb12f0 HEAD --rounds 3 -- --variants tiny mini --precisions fp32 --repeats 3 --steps 2 --warmup 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worktree(rev: str, root: Path) -> Path:
    path = root / rev.replace("/", "_")
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(path), rev],
                   check=True, capture_output=True)
    return path


def run_once(tree: Path, bench_args: list[str]) -> list[dict]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        env = {**os.environ, "PYTHONPATH": str(tree / "src")}
        subprocess.run([sys.executable, str(tree / "benchmarks" / "pretrain_throughput.py"), *bench_args,
                        "--json", out.name], check=True, env=env, cwd=tree, stdout=subprocess.DEVNULL)
        return json.loads(Path(out.name).read_text())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("revs", nargs="+", help="git revisions to compare (the first is the reference)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", help="write every record here")
    args, bench_args = p.parse_known_args()
    bench_args = [a for a in bench_args if a != "--"]
    rows: dict[tuple[str, str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bertkit-revs-") as tmp:
        trees = {rev: worktree(rev, Path(tmp)) for rev in args.revs}
        try:
            for r in range(args.rounds):
                for rev, tree in trees.items():
                    for rec in run_once(tree, bench_args):
                        rows.setdefault((rec["variant"], rec["precision"], rev), []).append(rec)
                    print(f"round {r + 1}/{args.rounds}: {rev} done", file=sys.stderr, flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                               capture_output=True)
    print(f"{'variant':8} {'prec':5} {'revision':12} {'ours seq/s':>10} {'ours/peer':>9} {'vs first':>8}")
    out = []
    for (variant, precision, rev), recs in rows.items():
        ours = statistics.median(x["ours_seq_per_s"] for x in recs)
        ratio = statistics.median(x["ratio"] for x in recs)
        first = statistics.median(x["ratio"] for x in rows[(variant, precision, args.revs[0])])
        print(f"{variant:8} {precision:5} {rev:12} {ours:10.2f} {ratio:9.2f} {ratio / first:8.3f}")
        out.append({"variant": variant, "precision": precision, "revision": rev, "ours_seq_per_s": ours,
                    "ratio": ratio, "ratio_vs_first": round(ratio / first, 3), "rounds": recs})
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
