"""Real learning on real text: phase 1 from scratch on WikiText-2 validation text (60 articles), with
masked-LM loss measured on held-out articles (every 10th), then phase 2 at sequence length 512 from
phase 1's last checkpoint. Prints the curve, writes the logs and a plot.

    python benchmarks/pretrain_wikitext.py --out runs/wikitext --steps 1200

Needs ../shared/data/corpus/wikitext-2-raw/wiki.valid.raw (or --text).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RAW = REPO.parent / "shared" / "data" / "corpus" / "wikitext-2-raw" / "wiki.valid.raw"


def split_articles(raw: Path, every: int, out: Path) -> tuple[Path, Path]:
    """Cut WikiText at its ` = Title = ` lines; every `every`-th article becomes test text, so the
    held-out articles are spread over the file like the training ones."""
    lines = raw.read_text(encoding="utf-8").splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if re.match(r"^ = [^=].* = $", line.rstrip("\n"))]
    bounds = list(zip(starts, starts[1:] + [len(lines)]))
    parts: dict[bool, list[str]] = {True: [], False: []}
    for k, (a, b) in enumerate(bounds):
        parts[k % every == every - 1] += lines[a:b]
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.raw").write_text("".join(parts[False]), encoding="utf-8")
    (out / "heldout.raw").write_text("".join(parts[True]), encoding="utf-8")
    print(f"{len(bounds)} articles: {len(bounds) // every} held out", flush=True)
    return out / "train.raw", out / "heldout.raw"


def bertkit(*args: str) -> None:
    cmd = [sys.executable, "-m", "bertkit", *args]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/wikitext")
    p.add_argument("--text", default=str(RAW))
    p.add_argument("--variant", default="tiny")
    p.add_argument("--steps", type=int, default=1200, help="Phase-1 steps.")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--warmup", type=int, default=60)
    p.add_argument("--phase2_steps", type=int, default=20)
    p.add_argument("--eval_every", type=int, default=100)
    p.add_argument("--held_out_every", type=int, default=10)
    args = p.parse_args()
    out = Path(args.out)
    train_txt, held_txt = split_articles(Path(args.text), args.held_out_every, out / "text")
    for name, txt, seq, preds, dupe in (("train128", train_txt, 128, 20, 5), ("heldout128", held_txt, 128, 20, 1),
                                        ("train512", train_txt, 512, 80, 1)):
        if not (out / name / "manifest.json").exists():
            bertkit("data", "create", str(txt), "-o", str(out / name), "--input_format", "wikitext",
                    "--max_seq_length", str(seq), "--max_predictions_per_seq", str(preds), "--dupe_factor", str(dupe))
    t0 = time.time()
    bertkit("pretrain", "--input_files_dir", str(out / "train128"), "--eval_files_dir", str(out / "heldout128"),
            "--do_eval", "--max_eval_steps", "40", "--eval_batch_size", "32", "--eval_every", str(args.eval_every),
            "--bert_config_file", args.variant, "--output_dir", str(out / "phase1"), "--overwrite",
            "--train_batch_size", str(args.batch), "--num_train_steps", str(args.steps),
            "--num_warmup_steps", str(args.warmup), "--learning_rate", str(args.lr),
            "--save_checkpoints_steps", str(args.steps), "--log_every", "10")
    phase1_s = time.time() - t0
    t0 = time.time()
    bertkit("pretrain", "--input_files_dir", str(out / "train512"), "--init_checkpoint", str(out / "phase1"),
            "--max_seq_length", "512", "--max_predictions_per_seq", "80", "--output_dir", str(out / "phase2"),
            "--overwrite", "--train_batch_size", "8", "--num_train_steps", str(args.phase2_steps),
            "--num_warmup_steps", "5", "--learning_rate", str(args.lr / 2), "--log_every", "5")
    phase2_s = time.time() - t0
    records = [json.loads(line) for line in (out / "phase1" / "log.jsonl").read_text().splitlines()]
    curve = [(r["step"], r["eval_mlm_loss"]) for r in records if "eval_mlm_loss" in r]
    print("\nheld-out masked-LM loss by step:")
    for step, loss in curve:
        print(f"  {step:5d}  {loss:.3f}")
    summary = {"phase1_seconds": round(phase1_s, 1), "phase2_seconds": round(phase2_s, 1),
               "heldout_mlm_loss": curve, "phase2_final": json.loads((out / "phase2" / "results.json").read_text())}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "heldout_mlm_loss"}, indent=2))
    try:
        bertkit("plot", str(out / "phase1" / "log.jsonl"), "-o", str(out / "curve.png"),
                "--keys", "mlm_loss", "eval_mlm_loss")
    except subprocess.CalledProcessError:
        print("(no plot: matplotlib missing)")


if __name__ == "__main__":
    main()
