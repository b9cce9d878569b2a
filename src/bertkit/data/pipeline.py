"""Raw text to finished datasets, in parallel over local processes and over hosts.

The inputs are cut into jobs of about `shard_mb` megabytes at document boundaries (`text.plan_jobs`).
Each job becomes, for every dataset, one shard, written under a temporary name and renamed; its
manifest entry goes to `DATASET/.parts/JOB.json`. A job's random generators are seeded from the
seed, the job's name and its inputs, so the output is the same byte for byte whether one process
or many made it, and a job whose shards and entries already exist is not redone (a stopped run
resumes). When every job is done, rank 0 writes each dataset's `manifest.json`.

Ranks: started under torchrun (RANK, WORLD_SIZE) or mpirun (OMPI_COMM_WORLD_RANK,
OMPI_COMM_WORLD_SIZE), each rank takes every WORLD_SIZE-th job. The output folder must be shared by
all hosts: rank 0 waits until every job's entry is there, then writes the manifests. A rank that
fails leaves a note in `OUTPUT/.bertkit-prepare/` so that rank 0 stops waiting.

    torchrun --nnodes 2 --nproc-per-node 1 ... -m bertkit data prepare --workers 16 ...
    mpirun -np 2 -H host1,host2 bertkit data prepare --workers 16 ...
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import sys
from pathlib import Path

from bertkit import BertkitError
from bertkit.data import shards as shardfile
from bertkit.data.parts import build_manifest, finish_text, job_done, wait_for_jobs, write_part
from bertkit.data.prepare_config import PrepareConfig
from bertkit.data.text import Job, documents, plan_jobs, read_piece, sentence_splitter
from bertkit.io import atomic_path, write_atomic
from bertkit.ranks import env_ranks


def prepare(config: PrepareConfig, rank: int | None = None, world: int | None = None,
            progress: bool = True, wait_timeout_s: float | None = None) -> dict:
    """Make every dataset of `config`. Returns {dataset folder: manifest} on rank 0, {} on others."""
    if rank is None or world is None:
        rank, world = env_ranks()[:2]
    vocab = _vocab_summary(config)
    jobs = plan_jobs(config.input_files(), int(config.shard_mb * 1e6))
    fingerprint = _fingerprint(config, vocab and vocab["sha256"], jobs)
    if config.phases:
        _claim_outputs(config, fingerprint, remove=rank == 0)
    markers = Path(config.output) / ".bertkit-prepare"
    failure = markers / f"failed-rank-{rank}.json"
    failure.unlink(missing_ok=True)
    try:
        _run_jobs(config, jobs[rank::world], fingerprint, progress and rank == 0)
    except BaseException as e:
        if world > 1:  # tell rank 0 to stop waiting
            write_atomic(failure, json.dumps({"fingerprint": fingerprint, "error": str(e)}).encode())
        raise
    if rank != 0:
        return {}
    if world > 1:
        wait_for_jobs(config, jobs, fingerprint, markers, wait_timeout_s)
    if not config.phases:
        finish_text(config, jobs)
        return {}
    manifests = {}
    for length, predictions in config.phases:
        for split in config.splits:
            folder = config.dataset_dir(length, split)
            manifests[folder] = build_manifest(config, folder, jobs, fingerprint, vocab,
                                                length, predictions, split)
    if all(m["instances"] == 0 for m in manifests.values()):
        what = "document of two or more sentences" if config.nsp else "sentence"
        raise BertkitError(f"{config.describe_inputs()}: no {what} found "
                           "(empty input, or the wrong --input-format?)")
    for folder, manifest in manifests.items():
        with atomic_path(folder / "vocab.txt") as tmp:
            shutil.copyfile(config.vocab_file, tmp)
        shardfile.write_manifest(folder, manifest)  # last: a dataset with a manifest is whole
        shutil.rmtree(folder / ".parts", ignore_errors=True)
    shutil.rmtree(markers, ignore_errors=True)
    return {str(folder): manifest for folder, manifest in manifests.items()}


def _claim_outputs(config: PrepareConfig, fingerprint: str, remove: bool) -> None:
    """Refuse to write a dataset over another one (made from other inputs or settings) unless
    --overwrite, or into a folder of training checkpoints. With --overwrite the old manifest goes
    first, so that the folder never passes for a finished dataset until the new one is."""
    for folder in {config.dataset_dir(length, split) for length, _ in config.phases for split in config.splits}:
        try:
            old = json.loads((folder / shardfile.MANIFEST).read_text())
        except (OSError, ValueError, RecursionError):
            continue  # no dataset there (or an unreadable manifest, which no reader takes either)
        if isinstance(old, dict) and old.get("fingerprint") == fingerprint:
            continue  # this very dataset: finished, or to finish
        if not config.overwrite:
            raise BertkitError(f"{folder}: holds a dataset made from other inputs or settings; pass --overwrite "
                               "to replace it, or choose another output folder")
        if remove:
            (folder / shardfile.MANIFEST).unlink(missing_ok=True)


def _vocab_summary(config: PrepareConfig) -> dict | None:
    """What the manifests say of the vocab; loading it also rejects a vocab without [MASK] and the like."""
    if config.vocab_file is None:
        return None
    from bertkit.tokenizer import load_vocab

    vocab = load_vocab(config.vocab_file)
    return {"sha256": shardfile.file_digests(config.vocab_file)[0], "size": len(vocab),
            "special_ids": {"cls": vocab["[CLS]"], "sep": vocab["[SEP]"], "mask": vocab["[MASK]"],
                            "pad": vocab["[PAD]"]}}


def _fingerprint(config: PrepareConfig, vocab_sha: str | None, jobs: list[Job]) -> str:
    """What the output depends on: equal fingerprints mean equal output."""
    keys = {k: v for k, v in dataclasses.asdict(config).items()
            if k not in ("inputs", "output", "vocab_file", "workers", "text_output", "overwrite")
            and not (k == "nsp" and v)}  # datasets made before --no_nsp existed keep their fingerprint
    keys["vocab_sha256"] = vocab_sha
    keys["jobs"] = [[(p.describe(), p.fmt) for p in job.pieces] for job in jobs]
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:20]


def job_seed(seed: int, job: Job, *parts: object) -> int:
    """A generator seed from the base seed and a job's identity (its name and the input bytes it
    covers), never from which worker or rank runs it."""
    text = json.dumps([seed, job.name, [p.describe() for p in job.pieces], *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def _run_jobs(config: PrepareConfig, jobs: list[Job], fingerprint: str, progress: bool) -> None:
    from tqdm import tqdm

    todo = [job for job in jobs if not job_done(config, job, fingerprint)]
    bar = tqdm(total=sum(j.size for j in todo), unit="B", unit_scale=True, desc="prepare",
               disable=None if progress else True, file=sys.stderr)
    with bar:
        if config.workers == 1 or len(todo) <= 1:
            worker = _Worker(config, fingerprint)
            for job in todo:
                worker.run(job)
                bar.update(job.size)
            return
        context = multiprocessing.get_context("spawn")  # no fork of a process holding threads
        workers = min(config.workers, len(todo))
        with context.Pool(workers, initializer=_init_worker, initargs=(config, fingerprint)) as pool:
            for size in pool.imap_unordered(_run_in_worker, todo):
                bar.update(size)


class _Worker:
    """Per-process state: the tokenizer and its word cache, the sentence splitter."""

    def __init__(self, config: PrepareConfig, fingerprint: str):
        self.config = config
        self.fingerprint = fingerprint
        self._split = None
        self.encoder = None
        if config.phases:
            from bertkit.data.encode import SentenceEncoder
            from bertkit.tokenizer import WordPiece

            self.tokenizer = WordPiece(config.vocab_file, lowercase=config.lowercase)
            self.encoder = SentenceEncoder(self.tokenizer)

    def run(self, job: Job) -> int:
        from bertkit.data.instances import create_blocks, create_instances, pack_instances

        config = self.config
        docs: list[list[str]] = []
        for piece in job.pieces:  # a piece starts a new document: none spans two files
            docs += [d for d in documents(read_piece(piece), piece.fmt, self.splitter(piece.fmt)) if d]
        chooser = random.Random(job_seed(config.seed, job, "split"))
        by_split: dict[str, list[list[str]]] = {s: [] for s in config.splits}
        for doc in docs:
            held_out = config.test_fraction > 0 and chooser.random() < config.test_fraction
            by_split["test" if held_out else "training"].append(doc)
        for split, split_docs in by_split.items():
            text_dir = config.text_dir(split)
            if text_dir is not None:
                text = "".join("\n".join(d) + "\n\n" for d in split_docs)
                write_atomic(text_dir / f"{job.name}.txt", text.encode("utf-8"))
            if not config.phases:
                write_part(text_dir / ".parts", job, self.fingerprint, {"documents": len(split_docs)})
                continue
            token_docs, counts = self._tokenize(split_docs)
            dtype = shardfile.token_dtype(len(self.tokenizer))
            for length, _ in config.phases:
                rng = random.Random(job_seed(config.seed, job, split, length))
                if config.nsp:
                    instances = create_instances(token_docs, rng, length, config.short_seq_prob, config.dupe_factor)
                else:
                    instances = create_blocks(token_docs, rng, length, self.tokenizer.sep_id, config.dupe_factor)
                folder = config.dataset_dir(length, split)
                entry = {"instances": len(instances), "tokens": 0, **counts,
                         "sources": [p.describe() for p in job.pieces]}
                if instances:
                    arrays = pack_instances(instances, self.tokenizer.cls_id, self.tokenizer.sep_id, dtype)
                    data = shardfile.encode_shard(*arrays)
                    name = f"{job.name}.bkshard"
                    write_atomic(folder / name, data)
                    sha, crc = shardfile.bytes_digests(data)
                    entry.update(file=name, bytes=len(data), sha256=sha, crc32c=crc, tokens=int(arrays[0].size))
                write_part(folder / ".parts", job, self.fingerprint, entry)
        return job.size

    def splitter(self, fmt: str):
        if fmt == "sentences":
            return None  # lines are sentences already
        if self._split is None:  # made on first need: blingfire is an optional dependency
            self._split = sentence_splitter(self.config.sentence_splitter)
        return self._split

    def _tokenize(self, docs: list[list[str]]) -> tuple[list[list[list[int]]], dict]:
        """Token ids per sentence per document; for sentence pairs, documents of one sentence are
        left out and counted (they can never give a real next sentence, only a random one)."""
        ids = iter(self.encoder.encode([s for d in docs for s in d]))
        kept, one_sentence, sentences = [], 0, 0
        for doc in docs:
            sentences_ids = [x for x in (next(ids) for _ in doc) if x]  # a sentence may tokenize to nothing
            if len(sentences_ids) >= (2 if self.config.nsp else 1):
                kept.append(sentences_ids)
                sentences += len(sentences_ids)
            elif sentences_ids:
                one_sentence += 1
        counts = {"documents": len(kept), "sentences": sentences, "one_sentence_documents_skipped": one_sentence}
        return kept, counts


_WORKER: _Worker | None = None


def _init_worker(config: PrepareConfig, fingerprint: str) -> None:
    global _WORKER
    # Each process works alone: keep the Rust tokenizer to one thread so processes do not contend.
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER = _Worker(config, fingerprint)


def _run_in_worker(job: Job) -> int:
    return _WORKER.run(job)
