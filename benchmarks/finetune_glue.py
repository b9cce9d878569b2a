"""GLUE fine-tuning side by side: `bertkit finetune glue` against Hugging Face transformers'
`BertForSequenceClassification` as its run_glue.py example trains it (the tokenizer on the same
columns, batches padded to their longest by DataCollatorWithPadding, AdamW, linear warm-up and
decay, in the plain PyTorch loop of finetune_mrpc.py), both from the same pretrained MiniLM, on
CoLA, SST-2 (a fixed 20,000-sentence subsample), STS-B and RTE, in the same run.

GLUE's dev sets are held out here, so each training file is split with a fixed seed into a training
part and a held-aside part (10%, at least 250 rows), written in GLUE's own layout. Both sides train
on the first and predict the second, and the predictions of both are scored by the same code
(scikit-learn's and SciPy's metrics, `score` below): Matthews correlation (CoLA), accuracy (SST-2,
RTE), Pearson and Spearman correlation (STS-B). Same learning rate, epochs, batch, warm-up (10%),
sequence length (128), seed and precision on both sides; training time counts the training loop only.

    python benchmarks/finetune_glue.py --json glue.json --parallel
    python benchmarks/finetune_glue.py --tasks rte --max_train_examples 200 --epochs 1   # a minute

`--parallel` runs the two sides at once, one thread each (see finetune_mrpc.py). The helpers
(`split_task`, `run_sides`, `score`, `peer_finetune`) are importable for other side-by-side tasks.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import finetune_mrpc as fm  # noqa: E402

GLUE = fm.REPO.parent / "shared" / "data" / "glue"


@dataclass(frozen=True)
class Task:
    folder: str  # GLUE's folder (and bertkit's --task_name)
    header: bool  # CoLA's train.tsv has none
    text: int  # column positions, as Hugging Face's glue processors read GLUE's files
    pair: int | None
    label: int
    labels: tuple[str, ...] | None  # index order; None: regression
    metrics: tuple[str, ...]  # the first is the task's GLUE score
    subsample: int | None = None  # rows drawn (with the split's seed) before splitting


TASKS = {
    "cola": Task("CoLA", False, 3, None, 1, ("0", "1"), ("matthews_correlation", "accuracy")),
    "sst2": Task("SST-2", True, 0, None, 1, ("0", "1"), ("accuracy",), subsample=20_000),
    "stsb": Task("STS-B", True, 7, 8, -1, None, ("pearson", "spearman")),
    "rte": Task("RTE", True, 1, 2, -1, ("entailment", "not_entailment"), ("accuracy",)),
}


def split_task(name: str, folder: Path, held_out: float = 0.1, min_held_out: int = 250, seed: int = 0,
               max_train_examples: int | None = None) -> Path:
    """folder/<GLUE folder>/train.tsv and dev.tsv: the task's training rows shuffled with `seed`
    (SST-2 first subsampled), the first max(held_out share, min_held_out) of them set aside as dev,
    the rest (or its first `max_train_examples`) for training; lines copied as they are."""
    t = TASKS[name]
    lines = (GLUE / t.folder / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    head, body = (lines[:1], lines[1:]) if t.header else ([], lines)
    order = list(range(len(body)))
    random.Random(seed).shuffle(order)
    if t.subsample:
        order = order[: t.subsample]
    n_dev = max(int(len(order) * held_out), min_held_out)
    dev, train = order[:n_dev], order[n_dev:]
    if max_train_examples:
        train = train[:max_train_examples]
    out = folder / t.folder
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("dev", dev)):
        (out / f"{split}.tsv").write_text("".join(head + [body[i] for i in rows]), encoding="utf-8")
    return out


def read_rows(name: str, path: Path) -> list[tuple[str, str | None, str]]:
    """(text, pair, label) of a GLUE file, read by position with csv and no quoting (the peer's
    reader: no bertkit code)."""
    t = TASKS[name]
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(r[t.text], r[t.pair] if t.pair is not None else None, r[t.label]) for r in rows[1 if t.header else 0:] if r]


def score(name: str, predicted: list, gold: list) -> dict:
    """The one scoring code both sides take: scikit-learn's and SciPy's metrics."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, matthews_corrcoef

    if TASKS[name].labels is None:
        p, g = [float(x) for x in predicted], [float(x) for x in gold]
        return {"pearson": float(pearsonr(p, g)[0]), "spearman": float(spearmanr(p, g)[0])}
    out = {"accuracy": float(accuracy_score(gold, predicted))}
    if "matthews_correlation" in TASKS[name].metrics:
        out["matthews_correlation"] = float(matthews_corrcoef(gold, predicted))
    return out


# ---- the peer: transformers as run_glue.py trains it, in finetune_mrpc's loop ---------------------

def peer_finetune(name: str, model_dir: Path, data_dir: Path, lr: float, epochs: float, batch_size: int = 32,
                  max_seq_length: int = 128, seed: int = 12345, precision: str = "fp32", threads: int | None = None
                  ) -> dict:
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification, DataCollatorWithPadding

    if threads:
        torch.set_num_threads(threads)
    t = TASKS[name]
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    pad = DataCollatorWithPadding(tok)  # pads each batch to its longest, as run_glue.py without --pad_to_max_length

    def encode(rows):
        a = [r[0] for r in rows]
        b = [r[1] for r in rows] if t.pair is not None else None
        enc = tok(a, b, truncation=True, max_length=max_seq_length)
        labels = [float(r[2]) if t.labels is None else t.labels.index(r[2]) for r in rows]
        return [{**{k: enc[k][i] for k in enc}, "label": y} for i, y in enumerate(labels)]

    train, dev = encode(read_rows(name, data_dir / "train.tsv")), encode(read_rows(name, data_dir / "dev.tsv"))
    torch.manual_seed(seed)
    model = BertForSequenceClassification.from_pretrained(
        str(model_dir), num_labels=1 if t.labels is None else len(t.labels),
        problem_type="regression" if t.labels is None else "single_label_classification")
    steps, seconds = fm.peer_train(model, train, pad, len(train), lr, epochs, batch_size, 0.1, seed, precision)
    model.eval()
    logits = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        for i in range(0, len(dev), 64):
            logits += model(**{k: v for k, v in pad(dev[i:i + 64]).items() if k != "labels"}).logits.float().tolist()
    predicted = [row[0] for row in logits] if t.labels is None else [t.labels[max(range(len(row)), key=row.__getitem__)]
                                                                    for row in logits]
    return {"steps": steps, "train_seconds": round(seconds, 2), "predictions": predicted}


# ---- ours: the bertkit command -------------------------------------------------------------------

def ours_command(name: str, model_dir: Path, data_dir: Path, out: Path, lr: float, epochs: float, batch_size: int,
                 precision: str, seed: int, extra: list[str] = ()) -> list[str]:
    return [sys.executable, "-m", "bertkit", "finetune", "glue", "--task_name", TASKS[name].folder,
            "--data_dir", str(data_dir), "--init_checkpoint", str(model_dir), "--output_dir", str(out),
            "--do_train", "--do_eval", "--learning_rate", str(lr), "--num_train_epochs", str(epochs),
            "--train_batch_size", str(batch_size), "--warmup_proportion", "0.1",
            "--layerwise_lr_decay", "1",  # the peer's schedule, whatever our defaults
            "--max_seq_length", "128", "--precision", precision, "--seed", str(seed), "--device", "cpu",
            "--overwrite", "--noresume", "--log_every", "20", *extra]


def read_ours(out: Path) -> dict:
    """Steps, training seconds and the held-aside predictions (eval_predictions.tsv's column)."""
    train = json.loads((out / "train_results.json").read_text())
    rows = [line.split("\t") for line in (out / "eval_predictions.tsv").read_text(encoding="utf-8").splitlines()]
    column = rows[0].index("prediction")
    return {"steps": train["steps"], "train_seconds": train["train_seconds"], "predictions": [r[column] for r in rows[1:]]}


def run_sides(cmds: dict[str, list[str]], work: Path, tag: str, threads: int | None, parallel: bool) -> None:
    """Run each side's command (at once with `parallel`), its output in work/<side>_<tag>.log."""
    procs = {}
    for side, cmd in cmds.items():
        log = open(work / f"{side}_{tag}.log", "w")
        procs[side] = subprocess.Popen(cmd, env=fm.env_threads(threads), stdout=log, stderr=subprocess.STDOUT)
        if not parallel:
            procs[side].wait()
    for side, p in procs.items():
        if p.wait() != 0:
            raise SystemExit(f"{side} failed (exit {p.returncode}); see {work / f'{side}_{tag}.log'}")


def run_task(name: str, args, model_dir: Path, work: Path, precision: str, threads: int | None, seed: int) -> dict:
    data = split_task(name, work / "data", args.held_out, args.min_held_out, args.split_seed, args.max_train_examples)
    tag = f"{name}_s{seed}"
    out, peer_json = work / f"ours_{tag}", work / f"peer_{tag}.json"
    cmds = {}
    if not args.peer_only:
        cmds["ours"] = ours_command(name, model_dir, data, out, args.lr, args.epochs, args.batch_size, precision, seed,
                                    args.ours_flags.split())
    if not args.ours_only:
        cmds["peer"] = [sys.executable, __file__, "_peer", json.dumps({
            "name": name, "model_dir": str(model_dir), "data_dir": str(data), "lr": args.lr, "epochs": args.epochs,
            "batch_size": args.batch_size, "seed": seed, "precision": precision, "threads": threads,
            "result": str(peer_json)})]
    run_sides(cmds, work, tag, threads, args.parallel)
    gold = [r[2] for r in read_rows(name, data / "dev.tsv")]
    row = {"task": name, "seed": seed, "train_examples": len(read_rows(name, data / "train.tsv")),
           "held_aside": len(gold)}
    for side in cmds:
        found = read_ours(out) if side == "ours" else json.loads(peer_json.read_text())
        predictions = found.pop("predictions")
        row[side] = {**found, **score(name, predictions, gold)}
    return row


def table(rows: list[dict]) -> str:
    head = f"{'task':<6} {'side':<6} {'train':>6} {'steps':>6} {'metric':<22} {'value':>8} {'train s':>8} {'peer/ours':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        for side in ("ours", "peer"):
            if side not in r:
                continue
            x = r[side]
            ratio = f"{r['peer']['train_seconds'] / x['train_seconds']:.2f}x" if side == "ours" and "peer" in r else ""
            for i, metric in enumerate(TASKS[r["task"]].metrics):
                lines.append(f"{r['task'] if i == 0 else '':<6} {side if i == 0 else '':<6} "
                             f"{r['train_examples'] if i == 0 else '':>6} {x['steps'] if i == 0 else '':>6} "
                             f"{metric:<22} {x[metric]:>8.4f} {x['train_seconds'] if i == 0 else '':>8} "
                             f"{ratio if i == 0 else '':>9}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_peer":
        a = json.loads(argv[1])
        result = a.pop("result")
        r = peer_finetune(a.pop("name"), Path(a.pop("model_dir")), Path(a.pop("data_dir")), **a)
        Path(result).write_text(json.dumps(r) + "\n")
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="cola,sst2,stsb,rte", help="Comma-separated: cola, sst2, stsb, rte.")
    p.add_argument("--lr", type=float, default=1e-4, help="Peak learning rate, both sides.")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_train_examples", type=int, default=None, help="Train on the first N rows of the training part.")
    p.add_argument("--seeds", default="12345", help="Comma-separated training seeds; each task runs once per seed.")
    p.add_argument("--held_out", type=float, default=0.1, help="Share of the training file set aside for scoring.")
    p.add_argument("--min_held_out", type=int, default=250, help="At least this many rows set aside.")
    p.add_argument("--split_seed", type=int, default=0, help="Seed of the split (and of SST-2's subsample).")
    p.add_argument("--ours_only", action="store_true")
    p.add_argument("--peer_only", action="store_true")
    p.add_argument("--model", default=None, help="Pretrained model folder (default: the MiniLM package).")
    fm.side_by_side_flags(p)
    args = p.parse_args(argv)
    names = args.tasks.split(",")
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        p.error(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    precision = fm.pick_precision(args.precision)
    threads = 1 if args.parallel else args.threads
    model_dir = Path(args.model) if args.model else fm.minilm_dir()
    with tempfile.TemporaryDirectory(prefix="bench-glue-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = []
        for name in names:
            for seed in (int(s) for s in args.seeds.split(",")):
                t0 = time.time()
                rows.append(run_task(name, args, model_dir, work, precision, threads, seed))
                print(table(rows[-1:]), f"\n({time.time() - t0:.0f} s)", flush=True)
        print(f"\nGLUE held-aside parts, lr {args.lr:g}, {args.epochs:g} epochs, batch {args.batch_size}, {precision}, "
              f"threads {threads or 'default'}{', sides in parallel' if args.parallel else ''}")
        print(table(rows))
        if args.json:
            Path(args.json).write_text(json.dumps({
                "lr": args.lr, "epochs": args.epochs, "batch_size": args.batch_size, "precision": precision,
                "threads": threads, "parallel": args.parallel, "max_train_examples": args.max_train_examples,
                "held_out": args.held_out, "min_held_out": args.min_held_out, "split_seed": args.split_seed,
                "model": str(model_dir), "ours_flags": args.ours_flags, "cpu": fm._cpu(), "results": rows},
                indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
