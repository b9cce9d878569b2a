"""The bookkeeping of a data run shared by processes and hosts: each job's manifest entry
(`DATASET/.parts/JOB.json`), rank 0's wait for every job (or a rank's failure note), and the final
manifests built from the entries."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from bertkit import BertkitError
from bertkit.data import shards as shardfile
from bertkit.data.prepare_config import PrepareConfig
from bertkit.data.text import Job
from bertkit.io import write_atomic


def write_part(folder: Path, job: Job, fingerprint: str, entry: dict) -> None:
    write_atomic(folder / f"{job.name}.json",
                 json.dumps({"fingerprint": fingerprint, "job": job.name, **entry}, sort_keys=True).encode())


def read_part(folder: Path, job: Job, fingerprint: str) -> dict | None:
    try:
        part = json.loads((folder / ".parts" / f"{job.name}.json").read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return part if isinstance(part, dict) and part.get("fingerprint") == fingerprint else None


def part_folders(config: PrepareConfig) -> list[Path]:
    """Where the jobs' manifest entries go: each dataset, or each text folder when only text is made."""
    if config.phases:
        return [config.dataset_dir(length, split) for length, _ in config.phases for split in config.splits]
    return [config.text_dir(split) for split in config.splits]


def manifest_entry(folder: Path, job: Job, fingerprint: str) -> dict | None:
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


def job_done(config: PrepareConfig, job: Job, fingerprint: str) -> bool:
    """True when an earlier run made this job's every output, with the same settings."""
    for folder in part_folders(config):
        part = read_part(folder, job, fingerprint) or manifest_entry(folder, job, fingerprint)
        if part is None:
            return False
        if "file" in part and shardfile.check_shard(folder / part["file"], part, full=False) is not None:
            return False
    for split in config.splits:
        text_dir = config.text_dir(split)
        if text_dir is not None and not (text_dir / f"{job.name}.txt").is_file():
            return False
    return True


def wait_for_jobs(config: PrepareConfig, jobs: list[Job], fingerprint: str, markers: Path,
                   timeout_s: float | None) -> None:
    """Rank 0 waits until every job's entries exist. The outputs themselves are the barrier: an
    entry is written only after its shard is whole, and entries left by an earlier run with the same
    fingerprint describe the very same bytes. (torch.distributed's barrier is not used: it gives up
    after 30 minutes, shorter than a rank's share of Wikipedia may take.)"""
    pending = [(folder, job) for folder in part_folders(config) for job in jobs]
    start, delay = time.monotonic(), 0.2
    while True:
        pending = [(folder, job) for folder, job in pending if not (
            read_part(folder, job, fingerprint) or manifest_entry(folder, job, fingerprint))]
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


def build_manifest(config: PrepareConfig, folder: Path, jobs: list[Job], fingerprint: str, vocab: dict,
                    length: int, predictions: int, split: str) -> dict:
    formats = sorted({fmt for _, fmt in config.input_files()})
    shards, empty = [], {}
    totals = {"documents": 0, "sentences": 0, "one_sentence_documents_skipped": 0}
    instances = tokens = 0
    for job in jobs:
        part = read_part(folder, job, fingerprint) or manifest_entry(folder, job, fingerprint)
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
            "next_sentence_pairs": config.nsp,
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


def finish_text(config: PrepareConfig, jobs: list[Job]) -> None:
    found = 0
    for folder in part_folders(config):
        for job in jobs:
            try:
                found += json.loads((folder / ".parts" / f"{job.name}.json").read_text())["documents"]
            except (OSError, ValueError, KeyError):
                pass
        shutil.rmtree(folder / ".parts", ignore_errors=True)
    if found == 0:
        raise BertkitError(f"{config.describe_inputs()}: no documents found (empty input?)")
