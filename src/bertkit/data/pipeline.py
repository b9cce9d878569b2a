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
import time
from dataclasses import dataclass, field
from pathlib import Path

from bertkit import BertkitError
from bertkit.data import shards as shardfile
from bertkit.data.text import (FORMATS, SPLITTERS, Job, documents, list_inputs, plan_jobs, read_piece,
                               sentence_splitter)
from bertkit.io import atomic_path, write_atomic

SPLITS = ("training", "test")


@dataclass
class PrepareConfig:
    """What to make from which text. Output: `output` itself is the dataset when there is one phase
    and no test split and `name` is None; else the seed's layout,
    `output/seq_len_{L}/{name}/{training,test}/`."""

    inputs: list  # text files or folders of them; an item (path, format) overrides input_format
    output: str  # dataset folder, or the root of the seed's layout
    input_format: str = "sentences"  # see bertkit.data.text
    vocab_file: str | None = None  # Google's vocab.txt; None writes sentence text only
    lowercase: bool = True  # uncased vocab: lower-case and strip accents, as Google's do_lower_case
    # (max_seq_length, max_predictions_per_seq) per phase
    phases: list[tuple[int, int]] = field(default_factory=lambda: [(128, 20)])
    dupe_factor: int = 5  # passes over the text with new pairs (Google's default is 10; the seed's scripts use 5)
    short_seq_prob: float = 0.1  # odds that a document aims at a random shorter length
    masked_lm_prob: float = 0.15  # recorded in the manifest for load-time masking
    whole_word_mask: bool = False  # recorded in the manifest: the reader then masks whole words
    seed: int = 12345
    test_fraction: float = 0.0  # documents held out for the test split
    name: str | None = None  # dataset name in the seed's layout (e.g. wikicorpus_en)
    text_output: str | None = None  # also write Google's input format (sentences) here, per split
    shard_mb: float = 16.0  # input text per job, hence per shard
    sentence_splitter: str = "blingfire"
    workers: int = 1  # local processes
    overwrite: bool = False  # replace a dataset made from other inputs or settings in an output folder

    def __post_init__(self):
        if not self.inputs:
            raise BertkitError("no input files given")
        if self.input_format not in FORMATS:
            raise BertkitError(f"--input-format: unknown format {self.input_format!r}; "
                               f"choose from {', '.join(FORMATS)}")
        if self.sentence_splitter not in SPLITTERS:
            raise BertkitError(f"--sentence-splitter: choose from {', '.join(SPLITTERS)}")
        self.phases = [(int(a), int(b)) for a, b in self.phases]
        for length, predictions in self.phases:
            if not 5 <= length <= 65535:
                raise BertkitError(f"--max-seq-length: {length} must be between 5 and 65535")
            if not 1 <= predictions <= length:
                raise BertkitError(f"--max-predictions-per-seq: {predictions} must be between 1 and "
                                   "the sequence length")
        if len({length for length, _ in self.phases}) != len(self.phases):
            raise BertkitError("two phases with the same max_seq_length")
        if self.phases and self.vocab_file is None:
            raise BertkitError("--vocab-file is needed to make instances")
        if self.dupe_factor < 1:
            raise BertkitError("--dupe-factor must be at least 1")
        for name in ("short_seq_prob", "masked_lm_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise BertkitError(f"--{name.replace('_', '-')} must be between 0 and 1")
        if not 0.0 <= self.test_fraction < 1.0:
            raise BertkitError("--test-fraction must be at least 0 and below 1")
        if self.shard_mb <= 0:
            raise BertkitError("--shard-mb must be positive")
        if self.workers < 1:
            raise BertkitError("--workers must be at least 1")
        if not self.phases and self.text_output is None:
            raise BertkitError("nothing to make: give a vocab and phases, or a text output folder")
        if self.phases and self.single and (len(self.phases) > 1 or self.test_fraction > 0):
            raise BertkitError("several phases or a test split need a dataset name (the seed's layout)")

    def input_files(self) -> list[tuple[Path, str]]:
        out = []
        for item in self.inputs:
            path, fmt = (item, self.input_format) if isinstance(item, (str, os.PathLike)) else item
            out += [(f, fmt) for f in list_inputs([path])]
        return out

    def describe_inputs(self) -> str:
        return ", ".join(str(item if isinstance(item, (str, os.PathLike)) else item[0]) for item in self.inputs)

    @property
    def single(self) -> bool:
        return self.name is None

    @property
    def splits(self) -> tuple[str, ...]:
        return SPLITS if self.test_fraction > 0 else SPLITS[:1]

    def dataset_dir(self, length: int, split: str) -> Path:
        if self.single:
            return Path(self.output)
        return Path(self.output) / f"seq_len_{length}" / self.name / split

    def text_dir(self, split: str) -> Path | None:
        if self.text_output is None:
            return None
        return Path(self.text_output) / split if self.test_fraction > 0 else Path(self.text_output)


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of ranks, from torchrun's or Open MPI's environment."""
    for rank_key, world_key in (("RANK", "WORLD_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
                                ("PMI_RANK", "PMI_SIZE")):
        if rank_key in os.environ and world_key in os.environ:
            try:
                rank, world = int(os.environ[rank_key]), int(os.environ[world_key])
            except ValueError:
                raise BertkitError(f"${rank_key}/${world_key} are not integers") from None
            if not 0 <= rank < world:
                raise BertkitError(f"${rank_key}={rank} is not below ${world_key}={world}")
            return rank, world
    return 0, 1


def default_workers() -> int:
    """The cores this process may use, shared among the ranks on this host."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE", "1")) or 1)
    return max(1, cores // max(1, local))


# ---- the run ------------------------------------------------------------------------------------

def prepare(config: PrepareConfig, rank: int | None = None, world: int | None = None,
            progress: bool = True, wait_timeout_s: float | None = None) -> dict:
    """Make every dataset of `config`. Returns {dataset folder: manifest} on rank 0, {} on others."""
    if rank is None or world is None:
        rank, world = rank_and_world()
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
        _wait_for_jobs(config, jobs, fingerprint, markers, wait_timeout_s)
    if not config.phases:
        _finish_text(config, jobs)
        return {}
    manifests = {}
    for length, predictions in config.phases:
        for split in config.splits:
            folder = config.dataset_dir(length, split)
            manifests[folder] = _build_manifest(config, folder, jobs, fingerprint, vocab,
                                                length, predictions, split)
    if all(m["instances"] == 0 for m in manifests.values()):
        raise BertkitError(f"{config.describe_inputs()}: no document of two or more sentences found "
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
    from bertkit.checkpoint import list_checkpoints

    for folder in {config.dataset_dir(length, split) for length, _ in config.phases for split in config.splits}:
        if list_checkpoints(folder):
            raise BertkitError(f"{folder}: holds training checkpoints; choose another output folder for the dataset")
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
            if k not in ("inputs", "output", "vocab_file", "workers", "text_output", "overwrite")}
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

    todo = [job for job in jobs if not _job_done(config, job, fingerprint)]
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
        from bertkit.data.instances import create_instances, pack_instances

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
                _write_part(text_dir / ".parts", job, self.fingerprint, {"documents": len(split_docs)})
                continue
            token_docs, counts = self._tokenize(split_docs)
            dtype = shardfile.token_dtype(len(self.tokenizer))
            for length, _ in config.phases:
                rng = random.Random(job_seed(config.seed, job, split, length))
                instances = create_instances(token_docs, rng, length, config.short_seq_prob, config.dupe_factor)
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
                _write_part(folder / ".parts", job, self.fingerprint, entry)
        return job.size

    def splitter(self, fmt: str):
        if fmt == "sentences":
            return None  # lines are sentences already
        if self._split is None:  # made on first need: blingfire is an optional dependency
            self._split = sentence_splitter(self.config.sentence_splitter)
        return self._split

    def _tokenize(self, docs: list[list[str]]) -> tuple[list[list[list[int]]], dict]:
        """Token ids per sentence per document; documents of one sentence are left out and counted
        (they can never give a real next sentence, only a random one)."""
        ids = iter(self.encoder.encode([s for d in docs for s in d]))
        kept, one_sentence, sentences = [], 0, 0
        for doc in docs:
            sentences_ids = [x for x in (next(ids) for _ in doc) if x]  # a sentence may tokenize to nothing
            if len(sentences_ids) >= 2:
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


# ---- parts, manifests, barrier ------------------------------------------------------------------

def _write_part(folder: Path, job: Job, fingerprint: str, entry: dict) -> None:
    write_atomic(folder / f"{job.name}.json",
                 json.dumps({"fingerprint": fingerprint, "job": job.name, **entry}, sort_keys=True).encode())


def _read_part(folder: Path, job: Job, fingerprint: str) -> dict | None:
    try:
        part = json.loads((folder / ".parts" / f"{job.name}.json").read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return part if isinstance(part, dict) and part.get("fingerprint") == fingerprint else None


def _part_folders(config: PrepareConfig) -> list[Path]:
    """Where the jobs' manifest entries go: each dataset, or each text folder when only text is made."""
    if config.phases:
        return [config.dataset_dir(length, split) for length, _ in config.phases for split in config.splits]
    return [config.text_dir(split) for split in config.splits]


def _manifest_entry(folder: Path, job: Job, fingerprint: str) -> dict | None:
    """A job's entry in a finished dataset of the same fingerprint (its part files are gone by then)."""
    try:
        manifest = json.loads((folder / shardfile.MANIFEST).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(manifest, dict) or manifest.get("fingerprint") != fingerprint:
        return None
    empty = manifest.get("jobs_without_instances", {})
    if job.name in empty:
        return {"instances": 0, "tokens": 0, **empty[job.name]}
    return next((e for e in manifest.get("shards", []) if e.get("file") == f"{job.name}.bkshard"), None)


def _job_done(config: PrepareConfig, job: Job, fingerprint: str) -> bool:
    """True when an earlier run made this job's every output, with the same settings."""
    for folder in _part_folders(config):
        part = _read_part(folder, job, fingerprint) or _manifest_entry(folder, job, fingerprint)
        if part is None:
            return False
        if "file" in part and shardfile.check_shard(folder / part["file"], part, full=False) is not None:
            return False
    for split in config.splits:
        text_dir = config.text_dir(split)
        if text_dir is not None and not (text_dir / f"{job.name}.txt").is_file():
            return False
    return True


def _wait_for_jobs(config: PrepareConfig, jobs: list[Job], fingerprint: str, markers: Path,
                   timeout_s: float | None) -> None:
    """Rank 0 waits until every job's entries exist. The outputs themselves are the barrier: an
    entry is written only after its shard is whole, and entries left by an earlier run with the same
    fingerprint describe the very same bytes. (torch.distributed's barrier is not used: it gives up
    after 30 minutes, shorter than a rank's share of Wikipedia may take.)"""
    pending = [(folder, job) for folder in _part_folders(config) for job in jobs]
    start, delay = time.monotonic(), 0.2
    while True:
        pending = [(folder, job) for folder, job in pending if not (
            _read_part(folder, job, fingerprint) or _manifest_entry(folder, job, fingerprint))]
        if not pending:
            return
        for failed in sorted(markers.glob("failed-rank-*.json")):
            try:
                report = json.loads(failed.read_text())
            except (OSError, ValueError):
                continue
            if report.get("fingerprint") == fingerprint:
                raise BertkitError(f"{failed.stem.removeprefix('failed-')} failed: {report.get('error')}")
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            folder, job = pending[0]
            raise BertkitError(f"rank 0 waited {timeout_s:.0f} s for {len(pending)} job output(s) of other ranks "
                               f"(first: {folder}/{job.name}); is {config.output} shared by all hosts?")
        time.sleep(delay)
        delay = min(5.0, delay * 1.5)  # spare a shared file system the polling of a long wait


def _build_manifest(config: PrepareConfig, folder: Path, jobs: list[Job], fingerprint: str, vocab: dict,
                    length: int, predictions: int, split: str) -> dict:
    formats = sorted({fmt for _, fmt in config.input_files()})
    shards, empty = [], {}
    totals = {"documents": 0, "sentences": 0, "one_sentence_documents_skipped": 0}
    instances = tokens = 0
    for job in jobs:
        part = _read_part(folder, job, fingerprint) or _manifest_entry(folder, job, fingerprint)
        if part is None:
            raise BertkitError(f"{folder}: the output of {job.name} is missing; run again to finish it")
        for key in totals:
            totals[key] += part.get(key, 0)
        if "file" in part:
            problem = shardfile.check_shard(folder / part["file"], part, full=False)
            if problem:
                raise BertkitError(f"{problem}; run again to remake it")
            keys = ("file", "bytes", "sha256", "crc32c", "instances", "tokens", "sources", *totals)
            shards.append({k: part[k] for k in keys})
            instances += part["instances"]
            tokens += part["tokens"]
        else:
            empty[job.name] = {key: part.get(key, 0) for key in totals}
    return {
        "format": shardfile.FORMAT,
        "version": shardfile.VERSION,
        "settings": {
            "max_seq_length": length,
            "max_predictions_per_seq": predictions,
            "masked_lm_prob": config.masked_lm_prob,
            "whole_word_mask": config.whole_word_mask,
            "short_seq_prob": config.short_seq_prob,
            "dupe_factor": config.dupe_factor,
            "seed": config.seed,
            "lowercase": config.lowercase,
            "input_formats": formats,
            "sentence_splitter": config.sentence_splitter if set(formats) - {"sentences"} else None,
            "split": split,
            "test_fraction": config.test_fraction,
            "vocab_file": "vocab.txt",
            "vocab_sha256": vocab["sha256"],
            "vocab_size": vocab["size"],
            "special_ids": vocab["special_ids"],
            "token_dtype": shardfile.token_dtype(vocab["size"]).str,
        },
        "fingerprint": fingerprint,  # of the settings and inputs: a rerun with the same one redoes nothing
        "instances": instances,
        "tokens": tokens,
        "counts": totals,
        "shards": shards,
        "jobs_without_instances": empty,
    }


def _finish_text(config: PrepareConfig, jobs: list[Job]) -> None:
    found = 0
    for folder in _part_folders(config):
        for job in jobs:
            try:
                found += json.loads((folder / ".parts" / f"{job.name}.json").read_text())["documents"]
            except (OSError, ValueError, KeyError):
                pass
        shutil.rmtree(folder / ".parts", ignore_errors=True)
    if found == 0:
        raise BertkitError(f"{config.describe_inputs()}: no documents found (empty input?)")
