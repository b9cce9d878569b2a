"""The corpora of the seed's `create_datasets_from_start.sh`: English Wikipedia and, when asked,
BookCorpus; and Wikipedia's extraction from its XML dump with wikiextractor.

Addresses are the ones the seed's scripts (NVIDIA's bertPrep.py, Habana's copy) use: the latest
English Wikipedia dump, checked against the SHA-1 list Wikimedia publishes beside it; and the book
list of soskek/bookcorpus (smashwords.com), from which the books offered as plain text are fetched.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bertkit import BertkitError
from bertkit.fetch import fetch
from bertkit.io import file_digest, write_atomic

WIKI_URL = "https://dumps.wikimedia.org/enwiki/latest/enwiki-latest-pages-articles.xml.bz2"
BOOKS_LIST_URL = "https://raw.githubusercontent.com/soskek/bookcorpus/master/url_list.jsonl"


def sha1_list_url(url: str) -> str | None:
    """Where Wikimedia (and mirrors laid out like it) list the SHA-1s of a dump's files:
    .../enwiki-latest-pages-articles.xml.bz2 -> .../enwiki-latest-sha1sums.txt"""
    folder, _, name = url.rstrip("/").rpartition("/")
    prefix, found, _ = name.partition("-pages-")
    return f"{folder}/{prefix}-sha1sums.txt" if found and folder else None


def download_wikipedia(folder: str | os.PathLike, url: str = WIKI_URL, sha1_url: str | None = "auto") -> Path:
    """Fetch the dump into `folder` (resuming a partial download) and check its SHA-1 against
    Wikimedia's list (`sha1_url`; "auto": beside the dump; None: no check). Returns the dump's path."""
    folder = Path(folder)
    name = url.rstrip("/").rsplit("/", 1)[-1]
    if sha1_url == "auto":
        sha1_url = sha1_list_url(url)
    dest = folder / name
    stamp = folder / f"{name}.sha1"  # written once the dump is verified, so a rerun skips the check
    if dest.exists() and stamp.exists() and stamp.read_text().split()[1:2] == [str(dest.stat().st_size)]:
        return dest
    expected = None
    sums = None
    if sha1_url:
        # Kept beside the dump under its own name: offline, the error names this lasting place, where a
        # list fetched by hand is found (and used) by the next run.
        sums_path = folder / sha1_url.rstrip("/").rsplit("/", 1)[-1]
        try:
            sums = fetch(sha1_url, sums_path, desc="sha1sums")
        except BertkitError as e:
            if "HTTP" not in str(e):
                raise  # offline: the dump cannot be had either
        lines = sums.read_text(encoding="utf-8", errors="replace").splitlines() if sums else []
        for line in lines:
            parts = line.split()
            if len(parts) == 2 and parts[1] == name:
                expected = parts[0].lower()
        if expected is None:
            print(f"bertkit: {sha1_url} lists no SHA-1 for {name}; the dump is not checked", file=sys.stderr)
    path = fetch(url, dest, desc=name)
    if expected is not None:
        digest = file_digest(path, "sha1")
        if digest != expected:
            path.unlink()
            sums.unlink()  # may list an older dump: the next run fetches both anew
            raise BertkitError(f"{url}: the download's SHA-1 {digest} is not Wikimedia's {expected} "
                               "(a newer dump may have appeared meanwhile); deleted, run again")
        stamp.write_text(f"{digest} {path.stat().st_size}\n")
    return path


def download_books(folder: str | os.PathLike, list_url: str = BOOKS_LIST_URL) -> tuple[int, int]:
    """Fetch BookCorpus's books that smashwords offers as text into `folder`, one file per book;
    books already there are kept. Books that fail (smashwords often answers 403 or 503) are
    counted and skipped, as are books offered only as EPUB. Returns (books present, books failed).
    Fails only when the list itself cannot be had or no book at all arrives."""
    folder = Path(folder)
    listing = fetch(list_url, folder / "url_list.jsonl", desc="book list")
    entries = []
    for number, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            raise BertkitError(f"{listing}:{number}: not a JSON line") from None
        if entry.get("txt"):
            book = str(entry.get("page", number)).rstrip("/").rsplit("/", 1)[-1]
            entries.append((entry["txt"], folder / "books" / f"{book}__{entry['txt'].rsplit('/', 1)[-1]}"))
    present = failed = 0
    first_error = None
    for url, dest in entries:
        try:
            fetch(url, dest, desc=dest.name)
            raw = dest.read_bytes()
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:  # a few books are not UTF-8: keep their text, mark what is lost
                write_atomic(dest, raw.decode("utf-8", errors="replace").encode("utf-8"))
            present += 1
        except BertkitError as e:
            failed += 1
            first_error = first_error or str(e)
    if entries and present == 0:
        raise BertkitError(f"none of {len(entries)} books could be downloaded; first error: {first_error}")
    if failed:
        print(f"bertkit: {failed} of {len(entries)} books failed to download and are left out "
              "(run again to retry them)", file=sys.stderr)
    return present, failed


def extract_wikipedia(dump: str | os.PathLike, output: str | os.PathLike, workers: int = 1,
                      file_size: str = "32M") -> Path:
    """Run wikiextractor over a dump (`.xml` or `.xml.bz2`) into `output`, which appears only when
    extraction succeeded. Files of `file_size` each; they are the jobs of the next step."""
    if importlib.util.find_spec("wikiextractor") is None:
        raise BertkitError("extracting Wikipedia needs wikiextractor: pip install 'bertkit[corpus]'")
    dump, output = Path(dump), Path(output)
    if not dump.is_file():
        raise BertkitError(f"{dump}: no such dump file")
    if output.is_dir() and any(f.stat().st_size for f in output.rglob("wiki_*")):
        return output  # done by an earlier run (the folder appears only when complete)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    command = [sys.executable, "-m", "wikiextractor.WikiExtractor", str(dump), "-o", str(tmp / "out"),
               "-b", file_size, "--processes", str(max(1, workers)), "-q"]
    try:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise BertkitError(f"{dump}: wikiextractor failed (exit {done.returncode}): {last}")
        if not any(f.stat().st_size for f in (tmp / "out").rglob("wiki_*")):
            raise BertkitError(f"{dump}: wikiextractor found no articles (is it a MediaWiki XML dump?)")
        if output.exists():
            shutil.rmtree(output)
        os.replace(tmp / "out", output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output
