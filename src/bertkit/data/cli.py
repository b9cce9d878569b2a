"""`bertkit data`: the seed's data scripts as subcommands.

    bertkit data prepare [wiki_only|wiki_books]   all of create_datasets_from_start.sh
    bertkit data download [wiki_only|wiki_books]  fetch Wikipedia (and BookCorpus)
    bertkit data extract DUMP                     Wikipedia XML to article text (wikiextractor)
    bertkit data format INPUT...                  text to Google's input format, sharded
    bertkit data create INPUT...                  Google's input format to a pretraining dataset
    bertkit data dump PATH                        any shard (bertkit or TFRecord) as JSON lines
    bertkit data verify PATH                      check a dataset's checksums or a TFRecord's CRCs
"""

from __future__ import annotations

import glob
import json
import sys
import time
from pathlib import Path

import numpy as np

from bertkit import BertkitError
from bertkit.checkpoint import list_checkpoints
from bertkit.data import sources
from bertkit.data.bundled import vocab_path
from bertkit.data.pipeline import prepare
from bertkit.data.prepare_config import PrepareConfig, default_workers
from bertkit.data.shards import is_dataset, is_shard, read_manifest, verify_dataset
from bertkit.data.text import FORMATS, SPLITTERS
from bertkit.data.tfrecord import FEATURES, TFRecordFile
from bertkit.flags import ArgumentParser, flag, parse_bool
from bertkit.ranks import env_ranks

SUBCOMMANDS = {
    "prepare": "download, extract, format and create phase-1 and phase-2 datasets (create_datasets_from_start.sh)",
    "download": "download Wikipedia and, with wiki_books, BookCorpus",
    "extract": "extract article text from a Wikipedia XML dump with wikiextractor",
    "format": "split text into sentences and write Google's input format, sharded",
    "create": "make a pretraining dataset from text (Google's create_pretraining_data.py)",
    "dump": "print a shard (bertkit or TFRecord) as JSON lines with Google's feature names",
    "verify": "check a dataset's shards against its manifest, or a TFRecord's CRCs",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        width = max(map(len, SUBCOMMANDS))
        print("usage: bertkit data <subcommand> [options]\n\nsubcommands:")
        for name, text in SUBCOMMANDS.items():
            print(f"  {name:<{width}}  {text}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        raise BertkitError(f"unknown subcommand {name!r}; choose from {', '.join(SUBCOMMANDS)}")
    return globals()[f"_{name}"](rest)


# ---- shared flags -------------------------------------------------------------------------------

def _pipeline_flags(p, format_default: str) -> None:
    flag(p, "input_format", default=format_default, choices=FORMATS,
         help=f"How the input text is laid out (default {format_default}); see bertkit.data.text.")
    flag(p, "sentence_splitter", default="blingfire", choices=SPLITTERS,
         help="blingfire (needs the corpus extra), or regex: cruder rules without dependencies.")
    flag(p, "shard_mb", type=float, default=16.0,
         help="Megabytes of input text per job and so per shard (default 16).")
    flag(p, "workers", type=int, default=default_workers(),
         help="Local processes (default: the cores of this host, shared among its ranks).")
    flag(p, "random_seed", "--seed", type=int, default=12345, dest="random_seed",
         help="Base seed; each shard's generator derives from it and the shard's inputs (default 12345).")


def _instance_flags(p) -> None:
    flag(p, "vocab_file", help="Google's vocab.txt (default: the bundled uncased English vocab).")
    flag(p, "do_lower_case", type=parse_bool, default=True,
         help="Lower-case and strip accents (uncased vocab). Must match the vocab.")
    flag(p, "dupe_factor", type=int, default=5,
         help="Passes over the text, each with new sentence pairs (default 5, as the seed's scripts).")
    flag(p, "short_seq_prob", type=float, default=0.1,
         help="Odds that a document aims at a random shorter length (default 0.1).")
    flag(p, "masked_lm_prob", type=float, default=0.15,
         help="Share of tokens to mask (default 0.15). Masks are drawn at load time: the value goes in "
              "the manifest, and the dataset reader uses it unless training sets its own.")
    flag(p, "do_whole_word_mask", type=parse_bool, default=False,
         help="Mask whole words at load time (recorded in the manifest, which the dataset reader honours).")
    flag(p, "no_nsp", type=parse_bool, default=False, help=(
        "No next-sentence pairs: instances of one segment filled to max_seq_length with whole consecutive "
        "sentences, crossing into the next document after a [SEP] (RoBERTa's FULL-SENTENCES, as MosaicBERT "
        "trains); --short_seq_prob does not apply. `bertkit pretrain` then trains masked LM alone."))
    flag(p, "overwrite", type=parse_bool, default=False,
         help="Replace a dataset made from other inputs or settings in the output folder (else refused).")


def _check_no_nsp(args) -> None:
    if args.no_nsp and args.short_seq_prob != 0.1:
        print("warning: --short_seq_prob has no effect with --no_nsp (blocks are filled to --max_seq_length)",
              file=sys.stderr)


def _vocab(args) -> str:
    return args.vocab_file or str(vocab_path())


def _inputs(positional: list[str], input_file: str | None) -> list[str]:
    """Inputs named as arguments, plus Google's --input_file (comma-separated globs)."""
    inputs = list(positional)
    for pattern in (input_file or "").split(","):
        if pattern:
            found = sorted(glob.glob(pattern))
            if not found:
                raise BertkitError(f"--input_file: {pattern} matches no file")
            inputs += found
    if not inputs:
        raise BertkitError("no input given (name files or folders, or pass --input_file)")
    return inputs


def _refuse_checkpoint_folders(config) -> None:
    """A dataset never goes into a folder of training checkpoints (a mistyped --output_dir)."""
    for folder in {config.dataset_dir(length, split) for length, _ in config.phases for split in config.splits}:
        if list_checkpoints(folder):
            raise BertkitError(f"{folder}: holds training checkpoints; choose another output folder for the dataset")


def _report(manifests: dict, started: float) -> None:
    for folder, m in manifests.items():
        counts = m["counts"]
        skipped = counts.get("one_sentence_documents_skipped", 0)
        note = f", {skipped} one-sentence document(s) skipped" if skipped else ""
        print(f"{folder}: {m['instances']} instances in {len(m['shards'])} shard(s) from "
              f"{counts['documents']} documents{note}")
    print(f"done in {time.time() - started:.1f} s")


# ---- subcommands --------------------------------------------------------------------------------

def _create(argv: list[str]) -> int:
    p = ArgumentParser(prog="bertkit data create", description=(
        "Make a pretraining dataset (bertkit shards and manifest) from text, by the algorithm of "
        "Google's create_pretraining_data.py. Masks are drawn when the data is loaded."))
    p.add_argument("inputs", nargs="*", help="Text files or folders of them.")
    flag(p, "input_file", help="Google's form: comma-separated files or globs.")
    flag(p, "output_dir", "-o", "--output", "--output_file", required=True, dest="output_dir",
         help="The dataset folder to write.")
    flag(p, "max_seq_length", type=int, default=128, help="Tokens per instance, [CLS] and [SEP]s included.")
    flag(p, "max_predictions_per_seq", type=int, default=20, help="Most masked positions per instance.")
    _instance_flags(p)
    _pipeline_flags(p, "sentences")
    args = p.parse_args(argv)
    _check_no_nsp(args)
    started = time.time()
    config = PrepareConfig(
        inputs=_inputs(args.inputs, args.input_file), output=args.output_dir, input_format=args.input_format,
        vocab_file=_vocab(args), lowercase=args.do_lower_case,
        phases=[(args.max_seq_length, args.max_predictions_per_seq)], dupe_factor=args.dupe_factor,
        short_seq_prob=args.short_seq_prob, masked_lm_prob=args.masked_lm_prob,
        whole_word_mask=args.do_whole_word_mask, nsp=not args.no_nsp, seed=args.random_seed, shard_mb=args.shard_mb,
        sentence_splitter=args.sentence_splitter, workers=args.workers, overwrite=args.overwrite)
    _refuse_checkpoint_folders(config)
    _report(prepare(config), started)
    return 0


def _format(argv: list[str]) -> int:
    p = ArgumentParser(prog="bertkit data format", description=(
        "Split text into sentences and write it in Google's input format (one sentence per line, "
        "a blank line between documents), one file per job of --shard-mb."))
    p.add_argument("inputs", nargs="+", help="Text files or folders of them.")
    flag(p, "output_dir", "-o", "--output", required=True, dest="output_dir", help="Folder to write.")
    flag(p, "test_fraction", type=float, default=0.0,
         help="Share of documents written to OUTPUT/test instead of OUTPUT/training (default 0: no split).")
    _pipeline_flags(p, "wikiextractor")
    args = p.parse_args(argv)
    config = PrepareConfig(inputs=args.inputs, output=args.output_dir, input_format=args.input_format,
                           phases=[], text_output=args.output_dir, test_fraction=args.test_fraction,
                           seed=args.random_seed,
                           shard_mb=args.shard_mb, sentence_splitter=args.sentence_splitter,
                           workers=args.workers)
    prepare(config)
    print(f"wrote {args.output_dir}")
    return 0


def _download(argv: list[str]) -> int:
    p = ArgumentParser(prog="bertkit data download", description=(
        "Download the English Wikipedia dump (checked against Wikimedia's SHA-1 list) and, with "
        "wiki_books, BookCorpus's text books. Downloads resume where they stopped."))
    p.add_argument("which", nargs="?", default="wiki_only", choices=("wiki_only", "wiki_books"))
    flag(p, "output_dir", "-o", "--output", default="bertkit-data/download", dest="output_dir",
         help="Folder for the downloads (default bertkit-data/download).")
    flag(p, "wiki_url", default=sources.WIKI_URL, help="The Wikipedia dump (a mirror, another language).")
    flag(p, "wiki_sha1_url", default="auto",
         help="Wikimedia's SHA-1 list for the dump (default: the one beside it); 'none' to skip the check.")
    flag(p, "books_list_url", default=sources.BOOKS_LIST_URL, help="soskek/bookcorpus's list of books.")
    args = p.parse_args(argv)
    out = Path(args.output_dir)
    dump = sources.download_wikipedia(out / "wikicorpus_en", args.wiki_url,
                                      None if args.wiki_sha1_url == "none" else args.wiki_sha1_url)
    print(f"wrote {dump}")
    if args.which == "wiki_books":
        present, failed = sources.download_books(out / "bookscorpus", args.books_list_url)
        print(f"wrote {present} books to {out / 'bookscorpus' / 'books'} ({failed} failed)")
    return 0


def _extract(argv: list[str]) -> int:
    p = ArgumentParser(prog="bertkit data extract", description=(
        "Extract the articles of a Wikipedia XML dump (.xml or .xml.bz2) with wikiextractor."))
    p.add_argument("dump", help="The dump file.")
    flag(p, "output_dir", "-o", "--output", required=True, dest="output_dir", help="Folder to write.")
    flag(p, "workers", type=int, default=default_workers(), help="wikiextractor processes.")
    args = p.parse_args(argv)
    print(f"wrote {sources.extract_wikipedia(args.dump, args.output_dir, args.workers)}")
    return 0


def _prepare(argv: list[str]) -> int:
    p = ArgumentParser(prog="bertkit data prepare", description=(
        "Everything create_datasets_from_start.sh does: download Wikipedia (and BookCorpus with "
        "wiki_books), extract, split into sentences, shard, and make phase-1 and phase-2 datasets "
        "in the seed's layout: WORKDIR/seq_len_{128,512}/{wikicorpus_en,books_wiki_en_corpus}/{training,test}. "
        "Under torchrun or mpirun the ranks share the work; WORKDIR must be on a shared file system."))
    p.add_argument("which", nargs="?", default="wiki_only", choices=("wiki_only", "wiki_books"))
    flag(p, "workdir", default="bertkit-data", help="Folder for everything (default bertkit-data).")
    flag(p, "input", nargs="+", help="Use this text instead of downloading (with --input-format).")
    flag(p, "wiki_dump", help="A Wikipedia dump already downloaded.")
    flag(p, "books_dir", help="A folder of BookCorpus books already downloaded (one .txt per book).")
    flag(p, "phases", default="128:20,512:80",
         help="max_seq_length:max_predictions_per_seq per phase (default 128:20,512:80).")
    flag(p, "test_fraction", type=float, default=0.1, help="Share of documents held out for test (default 0.1).")
    flag(p, "wiki_url", default=sources.WIKI_URL, help="The Wikipedia dump to download.")
    flag(p, "books_list_url", default=sources.BOOKS_LIST_URL, help="soskek/bookcorpus's list of books.")
    _instance_flags(p)
    _pipeline_flags(p, "wikiextractor")
    args = p.parse_args(argv)
    try:
        phases = [tuple(int(x) for x in item.split(":")) for item in args.phases.split(",")]
        assert all(len(ph) == 2 for ph in phases)
    except (ValueError, AssertionError):
        raise BertkitError(f"--phases: expected LENGTH:PREDICTIONS[,...], got {args.phases!r}") from None
    _check_no_nsp(args)
    started = time.time()
    rank, world = env_ranks()[:2]
    work = Path(args.workdir)
    books = args.which == "wiki_books"
    if args.input:
        inputs = [(path, args.input_format) for path in args.input]
    else:
        extracted = work / "extracted" / "wikicorpus_en"
        if rank == 0:
            dump = Path(args.wiki_dump) if args.wiki_dump else sources.download_wikipedia(
                work / "download" / "wikicorpus_en", args.wiki_url)
            sources.extract_wikipedia(dump, extracted, args.workers)
        inputs = [(str(_wait_for(extracted, rank)), "wikiextractor")]
        if books:
            books_dir = Path(args.books_dir) if args.books_dir else work / "download" / "bookscorpus" / "books"
            if rank == 0 and not args.books_dir:
                sources.download_books(work / "download" / "bookscorpus", args.books_list_url)
            inputs.append((str(_wait_for(books_dir, rank)), "books"))
    config = PrepareConfig(
        inputs=inputs, output=str(work), input_format=args.input_format, vocab_file=_vocab(args),
        lowercase=args.do_lower_case, phases=phases, dupe_factor=args.dupe_factor,
        short_seq_prob=args.short_seq_prob, masked_lm_prob=args.masked_lm_prob,
        whole_word_mask=args.do_whole_word_mask, nsp=not args.no_nsp, seed=args.random_seed,
        test_fraction=args.test_fraction,
        name="books_wiki_en_corpus" if books else "wikicorpus_en",
        text_output=str(work / "formatted"), shard_mb=args.shard_mb,
        sentence_splitter=args.sentence_splitter, workers=args.workers, overwrite=args.overwrite)
    _refuse_checkpoint_folders(config)
    manifests = prepare(config, rank, world)
    if rank == 0:
        _report(manifests, started)
    return 0


def _wait_for(path: Path, rank: int) -> Path:
    """Ranks other than 0 wait for rank 0's download and extraction (folders appear whole)."""
    if rank != 0:
        while not path.exists():
            time.sleep(5)
    return path


def _verify(argv: list[str]) -> int:
    p = ArgumentParser(prog="bertkit data verify", description=(
        "Check a bertkit dataset's shards against the sha256 in its manifest, or every record CRC "
        "of TFRecord files. Exit status 2 when anything fails."))
    p.add_argument("path", help="A dataset folder, a TFRecord file, or a folder of TFRecords.")
    args = p.parse_args(argv)
    path = Path(args.path)
    if is_dataset(path):
        manifest = read_manifest(path)
        problems = verify_dataset(path, full=True)
        if problems:
            raise BertkitError(f"{len(problems)} of {len(manifest['shards'])} shard(s) fail; first: {problems[0]}")
        print(f"{path}: {len(manifest['shards'])} shard(s), {manifest['instances']} instances, all sha256 match")
        return 0
    files = _tfrecord_files(path)
    total = bad = 0
    first = None
    for f in files:
        records = TFRecordFile(f, skip_corrupt=True)
        total += len(records) + records.corrupt_skipped
        bad += records.corrupt_skipped
        if records.corrupt_records and first is None:
            first = f"{f}: record {records.corrupt_records[0]}"
        records.close()
    if bad:
        raise BertkitError(f"{bad} corrupt record(s) in {len(files)} file(s); first: {first} "
                           "(readers can skip them with --skip-corrupt)")
    print(f"{path}: {total} records in {len(files)} file(s), all CRCs match")
    return 0


def _tfrecord_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise BertkitError(f"{path}: empty folder")
        return files
    if not path.exists():
        raise BertkitError(f"{path}: no such file or folder")
    return [path]


def _dump(argv: list[str]) -> int:
    p = ArgumentParser(prog="bertkit data dump", description=(
        "Print each record of a bertkit dataset or TFRecord file(s) as one JSON line with the "
        "feature names of Google's schema. TFRecords print as stored (padded); bertkit instances "
        "print unpadded, with the masks that --seed and --epoch draw."))
    p.add_argument("path", help="A dataset folder or one of its shards, a TFRecord file (plain or GZIP), "
                                "or a folder of TFRecords.")
    flag(p, "limit", type=int, help="Print at most this many records.")
    flag(p, "skip_corrupt", type=parse_bool, default=False,
         help="Skip corrupt TFRecord records (and corrupt shards) and report how many at the end.")
    flag(p, "seed", type=int, default=12345, help="Mask seed for bertkit datasets (default 12345).")
    flag(p, "epoch", type=int, default=0, help="Mask epoch for bertkit datasets (default 0).")
    args = p.parse_args(argv)
    path = Path(args.path)
    out = sys.stdout
    limit = args.limit if args.limit is not None else float("inf")
    printed = skipped = 0
    if is_dataset(path) or is_shard(path) or (path.is_dir() and any(map(is_shard, path.iterdir()))):
        dataset, skipped = _open_dataset(path, args)
        for i in range(len(dataset)):
            if printed >= limit:
                break
            item = dataset[i]
            n, m = len(item["input_ids"]), len(item["masked_lm_positions"])
            record = {"input_ids": item["input_ids"].tolist(), "input_mask": [1] * n,
                      "segment_ids": item["segment_ids"].tolist(),
                      "masked_lm_positions": item["masked_lm_positions"].tolist(),
                      "masked_lm_ids": item["masked_lm_ids"].tolist(), "masked_lm_weights": [1.0] * m,
                      "next_sentence_labels": [int(item["next_sentence_labels"])]}
            out.write(json.dumps(record) + "\n")
            printed += 1
    else:
        for f in _tfrecord_files(path):
            records = TFRecordFile(f, skip_corrupt=args.skip_corrupt)
            skipped += records.corrupt_skipped
            for i in range(len(records)):
                if printed >= limit:
                    break
                ex = records.example(i)
                keys = [k for k in FEATURES if k in ex] + sorted(k for k in ex if k not in FEATURES)
                out.write(json.dumps({k: _jsonable(ex[k]) for k in keys}) + "\n")
                printed += 1
            records.close()
    out.flush()
    if skipped:
        print(f"bertkit data dump: skipped {skipped} corrupt record(s)", file=sys.stderr)
    return 0


def _open_dataset(path: Path, args):
    from bertkit.data.pretraining import PretrainingDataset
    settings = read_manifest(path if path.is_dir() else path.parent)["settings"]
    ids = settings["special_ids"]
    dataset = PretrainingDataset(
        path, settings["max_seq_length"], settings["max_predictions_per_seq"], settings["vocab_size"],
        (ids["cls"], ids["sep"], ids["mask"], ids["pad"]), seed=args.seed,
        masked_lm_prob=settings["masked_lm_prob"], skip_corrupt=args.skip_corrupt)
    dataset.set_epoch(args.epoch)
    return dataset, dataset.corrupt_skipped


def _jsonable(values) -> list:
    if isinstance(values, np.ndarray):
        return values.tolist()  # float32 values become the Python floats TensorFlow's decoder gives
    return [v.decode("utf-8", "replace") for v in values]
