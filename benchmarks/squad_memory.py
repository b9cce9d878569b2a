"""Peak resident memory and training time of a short `bertkit finetune squad` run (MiniLM, one
thread) under different glibc malloc thresholds (`distributed.keep_freed_memory`'s limit; 0 leaves
glibc's defaults), each in a fresh process that reports its own peak RSS (getrusage) at exit.

Training data: the chosen articles of finetune_squad.py's training part (18 articles of
`dev-v1.1-even-articles.json`, every 4th held aside).

    python benchmarks/squad_memory.py --limits 0,50331648,268435456 --articles 8,13,14
    python benchmarks/squad_memory.py --limits 0,268435456 --articles 1,2,3 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import finetune_mrpc as fm  # noqa: E402
import finetune_squad as fs  # noqa: E402

# bertkit's command line with keep_freed_memory's limit replaced first (0: not called at all)
RUN = """import resource, sys
import bertkit.distributed as d
limit = int(sys.argv.pop(1))
if limit:
    d.keep_freed_memory.__defaults__ = (limit,)
else:
    d.keep_freed_memory = lambda *a, **k: False
from bertkit.cli import main
code = main()
print("peak_rss_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
raise SystemExit(code)
"""


def run(limit: int, train: Path, model_dir: Path, out: Path) -> tuple[int, float, int]:
    """(peak RSS in MiB, training seconds, steps) of one run in a fresh process."""
    cmd = [sys.executable, "-c", RUN, str(limit), "finetune", "squad", "--train_file", str(train),
           "--init_checkpoint", str(model_dir), "--output_dir", str(out), "--num_train_epochs", "1",
           "--train_batch_size", "16", "--max_seq_length", "384", "--doc_stride", "128", "--precision", "fp32",
           "--device", "cpu", "--overwrite", "--noresume", "--seed", "1"]
    r = subprocess.run(cmd, env=fm.env_threads(1), check=True, capture_output=True, text=True)
    peak = int(r.stdout.split("peak_rss_kib")[-1])
    tr = json.loads((out / "train_results.json").read_text())
    return peak // 1024, tr["train_seconds"], tr["steps"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limits", default="0,268435456", help="Comma-separated byte limits; 0 = glibc's defaults.")
    p.add_argument("--articles", default="8,13,14", help="Indexes into the 18 training articles.")
    p.add_argument("--repeats", type=int, default=1)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-squad-mem-") as tmp:
        train, _ = fs.split_squad(fs.SQUAD, 4, None, None, Path(tmp) / "data")
        data = json.loads(train.read_text(encoding="utf-8"))
        data["data"] = [data["data"][int(i)] for i in a.articles.split(",")]
        part = Path(tmp) / "part.json"
        part.write_text(json.dumps(data), encoding="utf-8")
        for _ in range(a.repeats):
            for limit in (int(x) for x in a.limits.split(",")):
                rss, secs, steps = run(limit, part, fm.minilm_dir(), Path(tmp) / f"out_{limit}")
                print(f"limit {limit >> 20} MiB: peak RSS {rss} MiB, {steps} steps in {secs:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
