"""Pretraining throughput: bertkit's step against Hugging Face transformers' BertForPreTraining.

Both train the same config on the same batch (forward, backward, optimizer step), alternated in one
process; warm-up steps are excluded and the median of repeated timings is reported. The same run
measures the peak of a matrix product in each precision, and each model's achieved FLOP/s as a
share of it (MFU).

FLOPs per sequence: `bertkit.model.pretraining_flops` (its docstring has the formula), the count
that `bertkit pretrain` logs its MFU with; the peak: `bertkit.distributed.matmul_peak`, which
`bertkit pretrain` measures at start. Both models are credited with the same useful FLOPs (the
peer also computes the last layer and the vocabulary projection at positions no loss reads), so
the MFU ratio equals the throughput ratio.

    python benchmarks/pretrain_throughput.py --variants tiny mini small base --precisions bf16 fp32 --json out.json

Real-data mode (`--real`): batches drawn from shards that `bertkit data create` makes from real
text (made once, under --data_dir), so that batches carry the padding real data has. bertkit runs
unpadded (its default) and padded (--nounpad), on the same batches as its training stream makes
them (padded to a multiple of 8); the peer gets each batch padded to its longest sequence, as its
data collator does, with -100 labels off the masked positions. Reported per corpus and length: the
padding share of the batches, sequences/s and real tokens/s of each, and the ratios.

    python benchmarks/pretrain_throughput.py --real wikitext sample squad --lengths 128:20 512:80 \
        --variants mini small --precisions fp32 --json real.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bertkit.config import variant
from bertkit.distributed import matmul_peak
from bertkit.model import BertForPreTraining, pretraining_flops
from bertkit.optim import make_optimizer


def batch(B: int, T: int, P: int, V: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(999, V, (B, T), generator=g)
    pos = torch.stack([torch.randperm(T - 2, generator=g)[:P].sort().values + 1 for _ in range(B)])  # (B, P)
    labels = ids.gather(1, pos)
    ids.scatter_(1, pos, 103)
    types = torch.zeros(B, T, dtype=torch.long)
    types[:, T // 2:] = 1
    return dict(input_ids=ids, segment_ids=types, input_mask=torch.ones(B, T, dtype=torch.long),
                masked_lm_positions=pos, masked_lm_ids=labels, masked_lm_weights=torch.ones(B, P),
                next_sentence_labels=torch.randint(0, 2, (B,), generator=g))


class Ours:
    name = "bertkit"

    def __init__(self, cfg, precision: str, optimizer: str, unpad: bool = True):
        from bertkit.tasks.pretrain import pretraining_loss
        self.model = BertForPreTraining(cfg).train()
        self.model.bert.unpad = unpad
        self.name = "bertkit" if unpad else "bertkit padded"
        self.opt = make_optimizer(optimizer, self.model, lr=1e-4)
        self.loss_fn = pretraining_loss
        self.precision = precision

    def step(self, b) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            loss, _ = self.loss_fn(self.model, b)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


class Peer:
    name = "transformers"

    def __init__(self, cfg, precision: str, optimizer: str):
        import transformers
        hf = transformers.BertConfig(**cfg.to_dict(), attn_implementation="sdpa")
        self.model = transformers.BertForPreTraining(hf).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, eps=1e-6, fused=True)
        self.precision = precision

    def step(self, b) -> None:
        labels = b.get("labels")  # real mode: made with the batch, as a data collator makes them
        if labels is None:
            labels = torch.full_like(b["input_ids"], -100).scatter_(1, b["masked_lm_positions"], b["masked_lm_ids"])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = self.model(input_ids=b["input_ids"], token_type_ids=b["segment_ids"],
                             attention_mask=b["input_mask"], labels=labels,
                             next_sentence_label=b["next_sentence_labels"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def time_steps(impl, b, steps: int) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        impl.step(b)
    return (time.perf_counter() - t) / steps


def compare(name: str, precision: str, B: int, T: int, P: int, repeats: int, steps: int, warmup: int,
            optimizer: str, peak: float) -> dict:
    cfg = variant(name)
    b = batch(B, T, P, cfg.vocab_size)
    torch.manual_seed(0)
    impls = [Ours(cfg, precision, optimizer), Peer(cfg, precision, optimizer)]
    for impl in impls:
        for _ in range(warmup):
            impl.step(b)
    times: dict[str, list[float]] = {impl.name: [] for impl in impls}
    for r in range(repeats):
        for impl in impls if r % 2 == 0 else impls[::-1]:  # alternate, so drift hits both alike
            times[impl.name].append(time_steps(impl, b, steps))
    ours, peer = (B / statistics.median(times[n]) for n in ("bertkit", "transformers"))
    flops = pretraining_flops(cfg, T, P)
    return {"variant": name, "precision": precision, "batch": B, "seq": T, "masked": P,
            "ours_seq_per_s": round(ours, 2), "peer_seq_per_s": round(peer, 2), "ratio": round(ours / peer, 2),
            "mfu": round(ours * flops / peak, 4), "peer_mfu": round(peer * flops / peak, 4),
            "ours_step_s": [round(t, 4) for t in times["bertkit"]],
            "peer_step_s": [round(t, 4) for t in times["transformers"]]}


CORPORA = {  # name: (path under the shared folder, `bertkit data create` input format, passes)
    "wikitext": ("data/corpus/wikitext-2-raw/wiki.valid.raw", "wikitext", 1),  # long articles
    "sample": ("fixtures/sample_text.txt", "sentences", 40),  # Google's 4 kB sample: more passes for enough instances
    "squad": ("data/squad/dev-v1.1-even-articles.json", "paragraphs", 1),  # one SQuAD paragraph per document
}


def make_shards(corpus: str, T: int, P: int, shared: Path, data_dir: Path) -> Path:
    """A dataset made by `bertkit data create` from `corpus` at seq T with P predictions; reused."""
    from bertkit.cli import main as bertkit
    path, fmt, passes = CORPORA[corpus]
    out = data_dir / f"{corpus}_{T}_{P}"
    if (out / "manifest.json").exists():
        return out
    source = shared / path
    if corpus == "squad":  # the paragraphs of the SQuAD file, each a document (blank line between)
        data = json.loads(source.read_text())
        source = data_dir / "squad_paragraphs.txt"
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text("\n\n".join(" ".join(p["context"].split()) for a in data["data"]
                                       for p in a["paragraphs"]) + "\n")
    assert bertkit(["data", "create", str(source), "-o", str(out), "--input_format", fmt, "--max_seq_length",
                    str(T), "--max_predictions_per_seq", str(P), "--dupe_factor", str(passes),
                    "--workers", "1", "--overwrite"]) == 0
    return out


def real_batches(folder: Path, B: int, T: int, P: int, n: int, seed: int = 12345) -> list[dict]:
    """The first `n` batches of a training run's stream over `folder` (pretraining's own collate),
    each with its peer form: trimmed to its longest sequence, with -100 labels off the predictions."""
    from bertkit.data.pretraining import PretrainingDataset, collate
    from bertkit.stream import Stream
    from bertkit.tasks.pretrain import drop_full_mask
    from bertkit.tokenizer import load_vocab
    v = load_vocab(folder / "vocab.txt")
    data = PretrainingDataset(folder, T, P, len(v), (v["[CLS]"], v["[SEP]"], v["[MASK]"], v["[PAD]"]), seed=seed)
    stream = Stream(data, B, lambda s: collate(s, P), seed=seed)
    out = []
    for i in range(n):
        b = stream.batch(i)
        longest = int(b["input_mask"].sum(1).max())
        peer = {k: b[k][:, :longest] for k in ("input_ids", "segment_ids", "input_mask")}  # (B, longest)
        labels = torch.full_like(peer["input_ids"], -100)  # (B, longest)
        real = b["masked_lm_weights"] > 0  # (B, P)
        labels[real.nonzero()[:, 0], b["masked_lm_positions"][real]] = b["masked_lm_ids"][real]
        out.append({"ours": drop_full_mask(dict(b)), "peer": {**b, **peer, "labels": labels},
                    "tokens": int(b["input_mask"].sum()), "slots": b["input_mask"].numel()})
    return out


def compare_real(name: str, precision: str, corpus: str, batches: list[dict], repeats: int, warmup: int,
                 optimizer: str) -> dict:
    """bertkit unpadded, bertkit padded and the peer on the same real batches, alternated."""
    cfg = variant(name)
    torch.manual_seed(0)
    impls = [Ours(cfg, precision, optimizer, unpad=True), Ours(cfg, precision, optimizer, unpad=False),
             Peer(cfg, precision, optimizer)]
    form = {"bertkit": "ours", "bertkit padded": "ours", "transformers": "peer"}
    for impl in impls:
        for b in batches[:warmup]:
            impl.step(b[form[impl.name]])
    times: dict[str, list[float]] = {impl.name: [] for impl in impls}
    for r in range(repeats):
        for impl in impls if r % 2 == 0 else impls[::-1]:  # alternate, so drift hits all alike
            t = time.perf_counter()
            for b in batches:
                impl.step(b[form[impl.name]])
            times[impl.name].append(time.perf_counter() - t)
    seqs = sum(len(b["ours"]["input_ids"]) for b in batches)
    tokens = sum(b["tokens"] for b in batches)
    padding = 1 - tokens / sum(b["slots"] for b in batches)
    ideal = 1 / (1 - padding)
    rec = {"variant": name, "precision": precision, "corpus": corpus, "batch": len(batches[0]["ours"]["input_ids"]),
           "batches": len(batches),
           "padding_share": round(padding, 4), "ideal": round(ideal, 3), "target": round(1 + 0.8 * (ideal - 1), 3)}
    for impl_name, key in (("bertkit", "unpadded"), ("bertkit padded", "padded"), ("transformers", "peer")):
        t = statistics.median(times[impl_name])
        rec[f"{key}_seq_per_s"] = round(seqs / t, 2)
        rec[f"{key}_tokens_per_s"] = round(tokens / t, 1)
        rec[f"{key}_round_s"] = [round(x, 3) for x in times[impl_name]]
    rec["unpadded_over_padded"] = round(rec["unpadded_seq_per_s"] / rec["padded_seq_per_s"], 2)
    rec["unpadded_over_peer"] = round(rec["unpadded_seq_per_s"] / rec["peer_seq_per_s"], 2)
    return rec


def main_real(args) -> list[dict]:
    shared = Path(args.shared)
    rows = []
    print(f"{'variant':8} {'corpus':9} {'seq':>4} {'pad':>6} {'target':>6} {'unpad tok/s':>11} {'padded tok/s':>12} "
          f"{'peer tok/s':>10} {'unpad/pad':>9} {'unpad/peer':>10}")
    for spec in args.lengths:
        T, P = map(int, spec.split(":"))
        for corpus in args.real:
            batches = real_batches(make_shards(corpus, T, P, shared, Path(args.data_dir)), args.batch, T, P,
                                   args.batches)
            for name in args.variants:
                for prec in args.precisions:
                    r = compare_real(name, prec, corpus, batches, args.repeats, args.warmup, args.optimizer)
                    r["seq"], r["masked"] = T, P
                    rows.append(r)
                    print(f"{name:8} {corpus:9} {T:4} {r['padding_share']:6.1%} {r['target']:6.2f} "
                          f"{r['unpadded_tokens_per_s']:11.1f} {r['padded_tokens_per_s']:12.1f} "
                          f"{r['peer_tokens_per_s']:10.1f} {r['unpadded_over_padded']:9.2f} "
                          f"{r['unpadded_over_peer']:10.2f}", flush=True)
                    gc.collect()
    return rows


def peak_rss(impl: str, name: str, precision: str, B: int, T: int, P: int, optimizer: str) -> float:
    """Peak resident memory (MB) of a fresh process running a few steps of one implementation."""
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child of
    # this (large) process would report the parent's peak.
    code = (f"import re, torch; from benchmarks.pretrain_throughput import *; cfg = variant({name!r}); "
            f"b = batch({B}, {T}, {P}, cfg.vocab_size); m = {impl}(cfg, {precision!r}, {optimizer!r}); "
            f"[m.step(b) for _ in range(3)]; "
            f"print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]) / 1024)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["tiny", "mini", "small", "base"])
    p.add_argument("--precisions", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--masked", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5, help="Timed rounds per implementation (median reported).")
    p.add_argument("--steps", type=int, default=3, help="Steps per timed round.")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "lamb"], help="Our optimizer (the peer uses AdamW).")
    p.add_argument("--memory", action="store_true", help="Also measure peak RSS of each, in fresh processes.")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", help="Write the records here.")
    p.add_argument("--real", nargs="+", choices=sorted(CORPORA), help="Real-data mode on these corpora.")
    p.add_argument("--lengths", nargs="+", default=["128:20", "512:80"],
                   help="Real-data mode: SEQ:PREDICTIONS pairs the shards are made for.")
    p.add_argument("--batches", type=int, default=4, help="Real-data mode: distinct batches per timed round.")
    p.add_argument("--data_dir", default="runs/bench_shards", help="Real-data mode: where the shards are made (kept).")
    p.add_argument("--shared", default=str(Path(__file__).resolve().parents[1].parent / "shared"),
                   help="The shared data folder (corpora and fixtures).")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.real:
        print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads; batch {args.batch}, {args.batches} batches per round")
        rows = main_real(args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=2)
        return
    peaks = {prec: matmul_peak(torch.device("cpu"), prec) for prec in args.precisions}
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          + ", ".join(f"{k} matmul peak {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items()))
    rows = []
    print(f"{'variant':8} {'prec':5} {'ours seq/s':>11} {'peer seq/s':>11} {'ratio':>6} {'MFU':>6}")
    for name in args.variants:
        for prec in args.precisions:
            r = compare(name, prec, args.batch, args.seq, args.masked, args.repeats, args.steps, args.warmup,
                        args.optimizer, peaks[prec])
            r["matmul_peak_gflops"] = round(peaks[prec] / 1e9, 1)
            if args.memory:
                r["ours_peak_rss_mb"] = peak_rss("Ours", name, prec, args.batch, args.seq, args.masked, args.optimizer)
                r["peer_peak_rss_mb"] = peak_rss("Peer", name, prec, args.batch, args.seq, args.masked, args.optimizer)
            rows.append(r)
            print(f"{name:8} {prec:5} {r['ours_seq_per_s']:11.2f} {r['peer_seq_per_s']:11.2f} {r['ratio']:6.2f} "
                  f"{r['mfu']:6.1%}", flush=True)
            gc.collect()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
