"""Speed of raw text to finished phase-1 pretraining shards, in MB of raw text per second per core.

    python benchmarks/prepare_data.py [--input wiki.valid.raw] [--workers 1] [--repeat 3] [--json out.json]

The input is WikiText-2 raw validation text (` = Title = ` lines start articles, ` = = Section = = `
headings are dropped). One run does everything `bertkit data create` does: read, split paragraphs
into sentences (blingfire), tokenize, make instances (max_seq_length 128, dupe_factor 1), write
shards, their checksums and the manifest. Each process keeps the Rust tokenizer to one thread, so
the figure per core is honest: MB / wall seconds / processes. The stage rows time the same steps one
by one in this process.

Peer: Google's create_pretraining_data.py needs TensorFlow, which this machine lacks, so it is not
run here. Its figure below was measured on this machine by the fixture's author
(shared/fixtures/google_wikitext2_valid/README.md): about 0.27 MB/s per core on the same text,
starting from text already split into sentences (our figure includes the splitting).
"""

from __future__ import annotations

import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # before tokenizers starts its thread pool
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_INPUT = REPO.parent / "shared" / "data" / "corpus" / "wikitext-2-raw" / "wiki.valid.raw"
GOOGLE_MB_S_CORE = 0.27  # shared/fixtures/google_wikitext2_valid/README.md


def end_to_end(text: Path, vocab: Path, workers: int, out: Path) -> tuple[float, float]:
    from bertkit.data.pipeline import PrepareConfig, prepare

    shutil.rmtree(out, ignore_errors=True)
    config = PrepareConfig(inputs=[str(text)], output=str(out), input_format="wikitext", vocab_file=str(vocab),
                           phases=[(128, 20)], dupe_factor=1, workers=workers,
                           shard_mb=max(0.05, text.stat().st_size / 1e6 / max(1, workers) / 2))
    start, cpu = time.perf_counter(), time.process_time()
    prepare(config, rank=0, world=1, progress=False)
    return time.perf_counter() - start, time.process_time() - cpu  # CPU: this process only


def stages(text: Path, vocab: Path) -> dict[str, float]:
    """The same work, step by step, in this process (the tokenizer's vocab load excluded)."""
    from bertkit.data import shards
    from bertkit.data.encode import SentenceEncoder
    from bertkit.data.instances import create_instances, pack_instances
    from bertkit.data.text import documents, sentence_splitter
    from bertkit.tokenizer import WordPiece

    tokenizer = WordPiece(vocab)
    encoder = SentenceEncoder(tokenizer)
    split = sentence_splitter("blingfire")
    times = {}
    t = time.perf_counter()
    raw = text.read_bytes().decode("utf-8")
    docs = [d for d in documents(raw, "wikitext", split) if d]
    times["read + split sentences"] = time.perf_counter() - t
    t = time.perf_counter()
    ids = iter(encoder.encode([s for d in docs for s in d]))
    token_docs = [[x for x in (next(ids) for _ in d) if x] for d in docs]
    times["tokenize (cold word cache)"] = time.perf_counter() - t
    t = time.perf_counter()
    instances = create_instances(token_docs, random.Random(12345), 128, 0.1, 1)
    times["create instances"] = time.perf_counter() - t
    t = time.perf_counter()
    data = shards.encode_shard(*pack_instances(instances, tokenizer.cls_id, tokenizer.sep_id,
                                               shards.token_dtype(len(tokenizer))))
    shards.bytes_digests(data)
    times["pack + checksum"] = time.perf_counter() - t
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="WikiText raw text.")
    p.add_argument("--vocab", type=Path, default=None, help="vocab.txt (default: the bundled uncased vocab).")
    p.add_argument("--workers", type=int, default=1, help="Local processes for the end-to-end run.")
    p.add_argument("--repeat", type=int, default=3, help="Runs; the fastest counts (the machine is shared).")
    p.add_argument("--json", type=Path, help="Also write the results here.")
    args = p.parse_args()
    from bertkit.data.bundled import vocab_path

    vocab = args.vocab or vocab_path()
    mb = args.input.stat().st_size / 1e6
    with tempfile.TemporaryDirectory(prefix="bertkit-bench-") as tmp:
        runs = [end_to_end(args.input, vocab, args.workers, Path(tmp) / "out") for _ in range(args.repeat)]
    walls = [wall for wall, _ in runs]
    stage_times = stages(args.input, vocab)
    best = min(walls)
    ours = mb / best / args.workers
    rows = [("bertkit data create (end to end)", best, ours)]
    if args.workers == 1:  # CPU seconds are immune to other programs sharing the core
        cpu = min(cpu for _, cpu in runs)
        rows.append(("  same, CPU seconds instead of wall", cpu, mb / cpu))
    rows += [(f"  stage: {name}", secs, mb / secs) for name, secs in stage_times.items()]
    print(f"input: {args.input} ({mb:.2f} MB), phase 1 (128/20), dupe_factor 1, "
          f"{args.workers} process(es), 1 tokenizer thread each, best of {args.repeat}")
    print(f"{'what':<40} {'seconds':>9} {'MB/s/core':>10}")
    for name, secs, rate in rows:
        print(f"{name:<40} {secs:>9.3f} {rate:>10.2f}")
    print(f"{'Google create_pretraining_data.py (*)':<40} {'':>9} {GOOGLE_MB_S_CORE:>10.2f}")
    print(f"(*) not run here (needs TensorFlow): measured on this machine, see the fixture README. "
          f"Speed-up: {ours / GOOGLE_MB_S_CORE:.1f}x")
    if args.json:
        args.json.write_text(json.dumps({
            "input": str(args.input), "input_mb": mb, "workers": args.workers, "repeat": args.repeat,
            "wall_s": walls, "cpu_s": [cpu for _, cpu in runs] if args.workers == 1 else None,
            "mb_per_s_per_core": ours, "stages_s": stage_times,
            "google_mb_per_s_per_core_reference": GOOGLE_MB_S_CORE, "goal_mb_per_s_per_core": 1.0}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
