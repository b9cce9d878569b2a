"""CoNLL-2003 NER fine-tuning side by side: `bertkit finetune ner` against Hugging Face transformers'
`BertForTokenClassification` as its run_ner.py example trains it (the tokenizer on pre-split words,
`is_split_into_words`, with label_all_tokens False: a word's first piece carries its tag and the
other pieces -100; batches padded to their longest by DataCollatorForTokenClassification; AdamW,
linear warm-up and decay, in the plain PyTorch loop of finetune_mrpc.py), both from the same
pretrained MiniLM, in the same run.

CoNLL-2003's dev and test sets are held out here, so the training file's sentences are split with a
fixed seed into a training part and a held-aside part (10%, at least 250 sentences), written as
CoNLL lines copied from the file. Held-aside sentences with a tag the training part lacks (B- tags
are rare in this IOB1 file) are left out and counted: bertkit refuses to score tags it never trained
on. Both sides train on the first part and tag every word of the second; the tags of both are scored
by the same code, seqeval's entity precision, recall and F1 (its default mode, conlleval's counting)
and token accuracy. A sentence longer than 128 pieces: bertkit tags it in windows (every word
predicted); the peer truncates as run_ner.py does, and its words past the cut count as O here (at
128 pieces one sentence of the 14,041 is that long). Same learning rate, epochs, batch, warm-up
(10%), sequence length (128), seed and precision on both sides; training time counts the training
loop only.

    python benchmarks/finetune_ner.py --json ner.json --parallel
    python benchmarks/finetune_ner.py --max_train_sentences 300 --epochs 1 --parallel   # about a minute

`--parallel` runs the two sides at once, one thread each (see finetune_mrpc.py).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import finetune_glue as fg  # noqa: E402
import finetune_mrpc as fm  # noqa: E402

CONLL = fm.REPO.parent / "shared" / "data" / "conll2003" / "train.txt"


def read_sentences(path: Path) -> list[list[str]]:
    """Each sentence's lines of a CoNLL file (`-DOCSTART-` lines and blank lines between them left
    out), read here and not by bertkit's reader, so that the peer shares no code with us."""
    sentences, current = [], []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if not line.strip() or line.startswith("-DOCSTART-"):
            if current:
                sentences.append(current)
            current = []
        else:
            current.append(line)
    if current:
        sentences.append(current)
    return sentences


def words_and_tags(sentence: list[str]) -> tuple[list[str], list[str]]:
    fields = [line.split() for line in sentence]
    return [f[0] for f in fields], [f[-1] for f in fields]


def split_conll(folder: Path, held_out: float = 0.1, min_held_out: int = 250, seed: int = 0,
                max_train_sentences: int | None = None) -> tuple[Path, Path, int]:
    """folder/train.txt and folder/dev.txt: the file's sentences shuffled with `seed`, the first
    max(held_out share, min_held_out) set aside, the rest (or its first `max_train_sentences`) for
    training; the held-aside sentences with a tag the training part lacks left out (their count is
    returned)."""
    sentences = read_sentences(CONLL)
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    n_dev = max(int(len(order) * held_out), min_held_out)
    dev, train = order[:n_dev], order[n_dev:]
    if max_train_sentences:
        train = train[:max_train_sentences]
    seen = {t for i in train for t in words_and_tags(sentences[i])[1]}
    kept = [i for i in dev if set(words_and_tags(sentences[i])[1]) <= seen]
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "train.txt", folder / "dev.txt"
    for path, rows in zip(paths, (train, kept)):
        path.write_text("".join("".join(line + "\n" for line in sentences[i]) + "\n" for i in rows), encoding="utf-8")
    return *paths, len(dev) - len(kept)


def score(gold: list[list[str]], predicted: list[list[str]]) -> dict:
    """The one scoring code both sides take: seqeval's (default mode)."""
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

    return {"f1": f1_score(gold, predicted), "precision": precision_score(gold, predicted),
            "recall": recall_score(gold, predicted), "accuracy": accuracy_score(gold, predicted)}


# ---- the peer: transformers as run_ner.py trains it, in finetune_mrpc's loop ----------------------

def peer_finetune(model_dir: Path, train_file: Path, dev_file: Path, lr: float, epochs: float, batch_size: int = 32,
                  max_seq_length: int = 128, seed: int = 12345, precision: str = "fp32", threads: int | None = None
                  ) -> dict:
    import torch
    from transformers import AutoTokenizer, BertForTokenClassification, DataCollatorForTokenClassification

    if threads:
        torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    train = [words_and_tags(s) for s in read_sentences(train_file)]
    dev = [words_and_tags(s) for s in read_sentences(dev_file)]
    labels = sorted({t for _, tags in train for t in tags})  # run_ner.py sorts the label list too

    def encode(rows):
        """Items with input ids and labels (first piece of a word: its tag; else -100), and the
        position of each word's first piece (None past the cut)."""
        enc = tok([w for w, _ in rows], is_split_into_words=True, truncation=True, max_length=max_seq_length)
        items, firsts = [], []
        for i, (words, tags) in enumerate(rows):
            word_ids, ids, first = enc.word_ids(i), [], [None] * len(words)
            for p, w in enumerate(word_ids):
                starts = w is not None and (p == 0 or word_ids[p - 1] != w)
                ids.append(labels.index(tags[w]) if starts else -100)
                if starts:
                    first[w] = p
            items.append({**{k: enc[k][i] for k in enc}, "labels": ids})
            firsts.append(first)
        return items, firsts

    (train_items, _), (dev_items, dev_first) = encode(train), encode(dev)
    pad = DataCollatorForTokenClassification(tok)  # pads to the batch's longest, labels with -100
    torch.manual_seed(seed)
    model = BertForTokenClassification.from_pretrained(str(model_dir), num_labels=len(labels),
                                                       id2label=dict(enumerate(labels)),
                                                       label2id={t: i for i, t in enumerate(labels)})
    steps, seconds = fm.peer_train(model, train_items, pad, len(train_items), lr, epochs, batch_size, 0.1, seed,
                                   precision)
    model.eval()
    predicted = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        for i in range(0, len(dev_items), 64):
            batch = pad([{k: v for k, v in x.items() if k != "labels"} for x in dev_items[i:i + 64]])
            best = model(**batch).logits.float().argmax(-1).tolist()  # (B, T)
            for row, first in zip(best, dev_first[i:i + 64]):
                predicted.append([labels[row[p]] if p is not None else "O" for p in first])  # past the cut: O
    return {"steps": steps, "train_seconds": round(seconds, 2), "predictions": predicted,
            "truncated_words": sum(p is None for first in dev_first for p in first)}


# ---- ours: the bertkit command -------------------------------------------------------------------

def ours_command(model_dir: Path, train_file: Path, dev_file: Path, out: Path, lr: float, epochs: float,
                 batch_size: int, precision: str, seed: int, extra: list[str] = ()) -> list[str]:
    return [sys.executable, "-m", "bertkit", "finetune", "ner", "--train_file", str(train_file),
            "--validation_file", str(dev_file), "--init_checkpoint", str(model_dir), "--output_dir", str(out),
            "--learning_rate", str(lr), "--num_train_epochs", str(epochs), "--train_batch_size", str(batch_size),
            "--warmup_proportion", "0.1", "--layerwise_lr_decay", "1",  # the peer's schedule, whatever our defaults
            "--max_seq_length", "128", "--precision", precision, "--seed", str(seed), "--device", "cpu",
            "--overwrite", "--noresume", "--log_every", "20", *extra]


def read_ours(out: Path) -> dict:
    """Steps, training seconds and the held-aside tags (eval_predictions.txt's last column)."""
    train = json.loads((out / "train_results.json").read_text())
    predicted = [[line.split(" ")[-1] for line in block.split("\n") if line]
                 for block in (out / "eval_predictions.txt").read_text(encoding="utf-8").split("\n\n") if block.strip()]
    return {"steps": train["steps"], "train_seconds": train["train_seconds"], "predictions": predicted}


def run(args, model_dir: Path, work: Path, precision: str, threads: int | None, seed: int) -> dict:
    train_file, dev_file, dropped = split_conll(work / "data", args.held_out, args.min_held_out, args.split_seed,
                                                args.max_train_sentences)
    tag = f"ner_s{seed}"
    out, peer_json = work / f"ours_{tag}", work / f"peer_{tag}.json"
    cmds = {}
    if not args.peer_only:
        cmds["ours"] = ours_command(model_dir, train_file, dev_file, out, args.lr, args.epochs, args.batch_size,
                                    precision, seed, args.ours_flags.split())
    if not args.ours_only:
        cmds["peer"] = [sys.executable, __file__, "_peer", json.dumps({
            "model_dir": str(model_dir), "train_file": str(train_file), "dev_file": str(dev_file), "lr": args.lr,
            "epochs": args.epochs, "batch_size": args.batch_size, "seed": seed, "precision": precision,
            "threads": threads, "result": str(peer_json)})]
    fg.run_sides(cmds, work, tag, threads, args.parallel)
    gold = [words_and_tags(s)[1] for s in read_sentences(dev_file)]
    row = {"seed": seed, "train_sentences": len(read_sentences(train_file)), "held_aside": len(gold),
           "held_aside_left_out": dropped}
    for side in cmds:
        found = read_ours(out) if side == "ours" else json.loads(peer_json.read_text())
        predicted = found.pop("predictions")
        row[side] = {**found, **score(gold, predicted)}
    return row


def table(rows: list[dict]) -> str:
    head = (f"{'side':<6} {'train':>6} {'steps':>6} {'entity F1':>9} {'precision':>9} {'recall':>7} "
            f"{'token acc':>9} {'train s':>8} {'peer/ours':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        for side in ("ours", "peer"):
            if side in r:
                x = r[side]
                ratio = f"{r['peer']['train_seconds'] / x['train_seconds']:.2f}x" if side == "ours" and "peer" in r else ""
                lines.append(f"{side:<6} {r['train_sentences']:>6} {x['steps']:>6} {x['f1']:>9.4f} {x['precision']:>9.4f} "
                             f"{x['recall']:>7.4f} {x['accuracy']:>9.4f} {x['train_seconds']:>8} {ratio:>9}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_peer":
        a = json.loads(argv[1])
        result = a.pop("result")
        r = peer_finetune(Path(a.pop("model_dir")), Path(a.pop("train_file")), Path(a.pop("dev_file")), **a)
        Path(result).write_text(json.dumps(r) + "\n")
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lr", type=float, default=1e-4, help="Peak learning rate, both sides.")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_train_sentences", type=int, default=None, help="Train on the first N sentences of the training part.")
    p.add_argument("--seeds", default="12345", help="Comma-separated training seeds.")
    p.add_argument("--held_out", type=float, default=0.1, help="Share of the sentences set aside for scoring.")
    p.add_argument("--min_held_out", type=int, default=250, help="At least this many sentences set aside.")
    p.add_argument("--split_seed", type=int, default=0, help="Seed of the split.")
    p.add_argument("--ours_only", action="store_true")
    p.add_argument("--peer_only", action="store_true")
    p.add_argument("--model", default=None, help="Pretrained model folder (default: the MiniLM package).")
    fm.side_by_side_flags(p)
    args = p.parse_args(argv)
    precision = fm.pick_precision(args.precision)
    threads = 1 if args.parallel else args.threads
    model_dir = Path(args.model) if args.model else fm.minilm_dir()
    with tempfile.TemporaryDirectory(prefix="bench-ner-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = []
        for seed in (int(s) for s in args.seeds.split(",")):
            t0 = time.time()
            rows.append(run(args, model_dir, work, precision, threads, seed))
            print(table(rows[-1:]), f"\n({time.time() - t0:.0f} s)", flush=True)
        r = rows[0]
        print(f"\nCoNLL-2003 held-aside part ({r['held_aside']} sentences, {r['held_aside_left_out']} left out), "
              f"lr {args.lr:g}, {args.epochs:g} epochs, batch {args.batch_size}, {precision}, "
              f"threads {threads or 'default'}{', sides in parallel' if args.parallel else ''}")
        print(table(rows))
        if args.json:
            Path(args.json).write_text(json.dumps({
                "lr": args.lr, "epochs": args.epochs, "batch_size": args.batch_size, "precision": precision,
                "threads": threads, "parallel": args.parallel, "max_train_sentences": args.max_train_sentences,
                "held_out": args.held_out, "min_held_out": args.min_held_out, "split_seed": args.split_seed,
                "model": str(model_dir), "ours_flags": args.ours_flags, "cpu": fm._cpu(), "results": rows},
                indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
