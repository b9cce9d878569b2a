"""bertkit's pretraining shards and the manifest that lists them.

A dataset is a folder: `manifest.json`, the shards it lists, and `vocab.txt` (the vocabulary its ids
refer to). A shard holds unmasked instances, `[CLS] A [SEP] B [SEP]`, packed end to end:

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

import google_crc32c
import numpy as np

from bertkit import BertkitError
from bertkit.io import write_atomic

MAGIC = b"BKSHARD\x01"
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
            for name, (offset, dtype, length) in header["arrays"].items():
                dtype = np.dtype(dtype)
                if offset + length * dtype.itemsize > len(data):
                    raise ValueError(f"array {name} runs past the end of the file")
                arrays[name] = data[offset:offset + length * dtype.itemsize].view(dtype)
            self.tokens = arrays["tokens"]
            self.offsets = arrays["offsets"]
            self.segment_a = arrays["segment_a"]
            self.next_sentence = arrays["next_sentence"]
        except (ValueError, KeyError, TypeError) as e:
            raise BertkitError(f"{self.path}: malformed shard header ({e})") from None
        self.size = len(self.segment_a)

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
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            sha.update(chunk)
            crc = google_crc32c.extend(crc, chunk)
    return sha.hexdigest(), crc


def file_crc32c(path: str | os.PathLike) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = google_crc32c.extend(crc, chunk)
    return crc


def bytes_digests(data: bytes) -> tuple[str, int]:
    return hashlib.sha256(data).hexdigest(), google_crc32c.value(data)


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
    except (OSError, ValueError) as e:
        raise BertkitError(f"{path}: unreadable manifest ({e})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise BertkitError(f"{path}: not a version-{VERSION} {FORMAT} manifest")
    for key in ("settings", "shards", "instances"):
        if key not in manifest:
            raise BertkitError(f"{path}: manifest lacks {key!r}")
    for shard in manifest["shards"]:
        for key in ("file", "bytes", "sha256", "crc32c", "instances"):
            if key not in shard:
                raise BertkitError(f"{path}: a shard entry lacks {key!r}")
    return manifest


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
