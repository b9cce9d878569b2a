"""bertkit's pretraining shards and the manifest that lists them.

A dataset is a folder: `manifest.json`, the shards it lists, and `vocab.txt` (the vocabulary its ids
refer to). A shard holds unmasked instances, `[CLS] A [SEP] B [SEP]` (or `[CLS] A [SEP]` alone in
a dataset whose manifest says `"next_sentence_pairs": false`), packed end to end:

    bytes 0..8     magic b"BKSHARD" + format version byte
    bytes 8..12    uint32 little-endian length of the JSON header that follows
    JSON header    {"instances": n, "tokens": t, "arrays": {name: [offset, dtype, length]}}
    arrays         each at a 64-byte aligned offset, little-endian:
        tokens         (t,)   uint16 when the vocab has fewer than 65536 ids, else int32
        offsets        (n+1,) int64: instance i is tokens[offsets[i]:offsets[i+1]]
        segment_a      (n,)   uint16: tokens of [CLS] A [SEP]; the rest is segment B
        next_sentence  (n,)   uint8: 1 when B is a random segment from another document

Everything is memory-mapped on read, so opening costs nothing and a lookup is two slices.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np

from bertkit import BertkitError
from bertkit.io import crc32c, file_chunks, write_atomic

MAGIC = b"BKSHARD\x01"
# The arrays of a shard and the types each may have.
ARRAYS = {"tokens": ("<u2", "<i4"), "offsets": ("<i8",), "segment_a": ("<u2",), "next_sentence": ("|u1",)}
ALIGN = 64
MANIFEST = "manifest.json"
FORMAT = "bertkit-pretraining"
VERSION = 1


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size < 65536 else np.dtype("<i4")


def encode_shard(tokens: np.ndarray, offsets: np.ndarray, segment_a: np.ndarray,
                 next_sentence: np.ndarray) -> bytes:
    """The bytes of one shard file (see the module docstring)."""
    arrays = {"tokens": tokens, "offsets": offsets.astype("<i8"), "segment_a": segment_a.astype("<u2"),
              "next_sentence": next_sentence.astype("u1")}
    # The header holds the arrays' offsets, so reserve room for it first and grow the room if needed.
    reserve = 256
    while True:
        pos, layout = reserve, {}
        for name, a in arrays.items():
            layout[name] = [pos, a.dtype.str, int(a.size)]
            pos = _align(pos + a.nbytes)
        header = json.dumps({"instances": int(segment_a.size), "tokens": int(tokens.size), "arrays": layout},
                            sort_keys=True).encode()
        if len(MAGIC) + 4 + len(header) <= reserve:
            break
        reserve = _align(len(MAGIC) + 4 + len(header) + ALIGN)
    out = bytearray(MAGIC + struct.pack("<I", len(header)) + header)
    for name, a in arrays.items():
        out += b"\0" * (layout[name][0] - len(out))
        out += a.tobytes()
    return bytes(out)


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class Shard:
    """One shard, memory-mapped."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            # A plain ndarray view of the map: slices of it are ndarrays, not memmaps.
            data = np.memmap(self.path, dtype=np.uint8, mode="r").view(np.ndarray)
        except (OSError, ValueError) as e:
            raise BertkitError(f"{self.path}: cannot read shard ({e})") from None
        if len(data) < 12 or bytes(data[:8]) != MAGIC:
            raise BertkitError(f"{self.path}: not a bertkit shard (bad magic bytes)")
        (n,) = struct.unpack("<I", bytes(data[8:12]))
        try:
            header = json.loads(bytes(data[12:12 + n]))
            arrays = {}
            for name in ARRAYS:
                offset, dtype, length = header["arrays"][name]
                # numpy parses some dtype strings with Python's parser: only names from the list reach it
                if dtype not in ARRAYS[name] or not all(
                        isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in (offset, length)):
                    raise ValueError(f"array {name}: {[offset, dtype, length]!r:.60} is not an offset, "
                                     f"one of the types {', '.join(ARRAYS[name])} and a length")
                dtype = np.dtype(dtype)
                if offset + length * dtype.itemsize > len(data):
                    raise ValueError(f"array {name} runs past the end of the file")
                arrays[name] = data[offset:offset + length * dtype.itemsize].view(dtype)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            raise BertkitError(f"{self.path}: malformed shard header ({e})") from None
        self.tokens, self.offsets = arrays["tokens"], arrays["offsets"]
        self.segment_a, self.next_sentence = arrays["segment_a"], arrays["next_sentence"]
        self.size = len(self.segment_a)
        problem = self._layout_problem()
        if problem:
            raise BertkitError(f"{self.path}: malformed shard ({problem})")

    def _layout_problem(self) -> str | None:
        lengths = np.diff(self.offsets)  # (n,) tokens per instance
        if len(self.offsets) != self.size + 1 or len(self.next_sentence) != self.size:
            return "its arrays disagree on the number of instances"
        if self.offsets[0] != 0 or self.offsets[-1] != len(self.tokens) or (lengths < 2).any():
            return "its offsets do not cut its tokens into instances of two tokens or more"
        if ((self.segment_a < 1) | (self.segment_a > lengths)).any() or (self.next_sentence > 1).any():
            return "a segment length or next-sentence label is out of range"
        return None

    def check_values(self, vocab_size: int, max_length: int) -> None:
        """Refuse ids the model has no embedding for and instances longer than it takes: they would
        fail mid-run as an index error (on a GPU, a device assert)."""
        if self.size and int(self.tokens.max()) >= vocab_size:
            raise BertkitError(f"{self.path}: holds token id {int(self.tokens.max())}, outside the vocabulary of "
                               f"{vocab_size}")
        if self.size and int(np.diff(self.offsets).max()) > max_length:
            raise BertkitError(f"{self.path}: holds an instance of {int(np.diff(self.offsets).max())} tokens, "
                               f"longer than {max_length}")

    def __len__(self) -> int:
        return self.size

    def instance(self, i: int) -> tuple[np.ndarray, int, int]:
        """(input_ids with [CLS]/[SEP], length of [CLS] A [SEP], next-sentence label) of instance i."""
        return (self.tokens[self.offsets[i]:self.offsets[i + 1]], int(self.segment_a[i]),
                int(self.next_sentence[i]))


# ---- checksums ----------------------------------------------------------------------------------

def file_digests(path: str | os.PathLike) -> tuple[str, int]:
    """(sha256 hex, crc32c) of a file, read once."""
    sha, crc = hashlib.sha256(), 0
    for chunk in file_chunks(path):
        sha.update(chunk)
        crc = crc32c(chunk, crc)
    return sha.hexdigest(), crc


def file_crc32c(path: str | os.PathLike) -> int:
    crc = 0
    for chunk in file_chunks(path):
        crc = crc32c(chunk, crc)
    return crc


def bytes_digests(data: bytes) -> tuple[str, int]:
    return hashlib.sha256(data).hexdigest(), crc32c(data)


# ---- manifest -----------------------------------------------------------------------------------

def is_shard(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def is_dataset(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of a dataset folder, checked for the keys readers rely on."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BertkitError(f"{folder}: no {MANIFEST} (not a bertkit dataset, or its creation did not "
                           "finish: run it again to complete it)") from None
    except (OSError, ValueError, RecursionError) as e:
        raise BertkitError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise BertkitError(f"{path}: not a version-{VERSION} {FORMAT} manifest")
    for key, kind in (("settings", dict), ("shards", list), ("instances", int)):
        if not isinstance(manifest.get(key), kind):
            raise BertkitError(f"{path}: manifest has no valid {key!r} ({kind.__name__} expected)")
    problem = _settings_problem(manifest["settings"])
    if problem:
        raise BertkitError(f"{path}: {problem}")
    for shard in manifest["shards"]:
        problem = _entry_problem(shard)
        if problem:
            raise BertkitError(f"{path}: a shard entry {problem}")
    return manifest


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _settings_problem(s: dict) -> str | None:
    """Why the settings that readers use are not usable, or None."""
    ids = s.get("special_ids")
    vocab = s["vocab_size"] if _count(s.get("vocab_size")) else 0
    checks = {
        "max_seq_length": _count(s.get("max_seq_length")) and s["max_seq_length"] > 0,
        "max_predictions_per_seq": _count(s.get("max_predictions_per_seq")),
        "vocab_size": _count(s.get("vocab_size")) and s["vocab_size"] > 0,
        "masked_lm_prob": isinstance(s.get("masked_lm_prob"), (int, float)) and not isinstance(
            s["masked_lm_prob"], bool) and 0 <= s["masked_lm_prob"] <= 1,
        "whole_word_mask": isinstance(s.get("whole_word_mask", False), bool),
        "next_sentence_pairs": isinstance(s.get("next_sentence_pairs", True), bool),
        "special_ids": isinstance(ids, dict) and all(
            _count(ids.get(k)) and ids[k] < vocab for k in ("cls", "sep", "mask", "pad")),
        "vocab_file": _plain_name(s.get("vocab_file", "vocab.txt")),
    }
    bad = [k for k, ok in checks.items() if not ok]
    return f"settings.{bad[0]} is missing or invalid ({s.get(bad[0])!r:.40})" if bad else None


def _plain_name(name) -> bool:
    """A file name inside the dataset folder: no path, no way out."""
    return isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0")


# What a manifest's shard entry holds, and the type of each.
ENTRY = {"file": str, "bytes": int, "sha256": str, "crc32c": int, "instances": int}


def _entry_problem(shard) -> str | None:
    if not isinstance(shard, dict):
        return "is not an object"
    for key, kind in ENTRY.items():
        value = shard.get(key)
        if not (_count(value) if kind is int else isinstance(value, str)):
            return f"has no valid {key!r} ({'a whole number' if kind is int else 'text'} expected, got {value!r:.40})"
    if not _plain_name(shard["file"]):
        return f"names {shard['file']!r:.60}, not a file in the dataset folder"
    return None


def write_manifest(folder: str | os.PathLike, manifest: dict) -> Path:
    path = Path(folder) / MANIFEST
    write_atomic(path, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
    return path


def verify_dataset(folder: str | os.PathLike, full: bool = True) -> list[str]:
    """Check every shard of a dataset against its manifest: size, then sha256 (`full`) or crc32c.
    Returns one line per bad shard; an empty list means all is well."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    problems = []
    for shard in manifest["shards"]:
        problem = check_shard(folder / shard["file"], shard, full)
        if problem:
            problems.append(problem)
    return problems


def check_shard(path: Path, entry: dict, full: bool) -> str | None:
    """None when the shard at `path` matches its manifest entry, else why not."""
    try:
        size = path.stat().st_size
    except OSError:
        return f"{path}: missing"
    if size != entry["bytes"]:
        return f"{path}: {size} bytes, the manifest says {entry['bytes']}"
    if full:
        if file_digests(path)[0] != entry["sha256"]:
            return f"{path}: sha256 does not match the manifest"
    elif file_crc32c(path) != entry["crc32c"]:
        return f"{path}: crc32c does not match the manifest"
    return None
