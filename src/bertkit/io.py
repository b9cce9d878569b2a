"""Files: atomic writing (a reader sees the old file or the whole new one, never half of one) and
digests read in one pass."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from bertkit import BertkitError

try:  # a dependency of bertkit, but absent from some GPU images; only CRC checks need it
    import google_crc32c
except ImportError:
    google_crc32c = None

# A write that fails for want of space: the disk is full, or the user's quota is spent.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(error: BaseException | None) -> bool:
    """True when `error`, or an error that caused it, is a write that found no space. safetensors
    reports it in its message only, torch.save as a RuntimeError raised while handling it, and an
    inner atomic_path as a BertkitError."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in NO_SPACE:
            return True
        text = str(error).lower()
        if "no space left on device" in text or "disk quota exceeded" in text:
            return True
        error = error.__cause__ or error.__context__
    return False


def os_error_message(error: OSError, where: str | os.PathLike) -> str:
    """One line for an OSError met while writing under `where` (a full disk, a read-only folder)."""
    path = error.filename or where
    if is_disk_full(error):
        return f"{path}: no space left on device (free some space or choose another folder)"
    return f"{path}: {error.strerror or error}"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`.

    On any exception the temporary file or folder is removed and `path` is left as it was. A full
    disk (or spent quota) becomes a BertkitError naming `path`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as e:
        raise BertkitError(f"{path}: cannot write there ({e.strerror or e})") from None
    target = tmp / path.name
    try:
        yield target
        if target.is_dir():
            for f in target.rglob("*"):
                if f.is_file():
                    _fsync(f)
        elif target.exists():
            _fsync(target)
        else:
            raise FileNotFoundError(f"nothing was written to {target}")
        old = None
        if path.is_dir() and target.is_dir():
            # A folder cannot be renamed over a non-empty one: move the old one aside first.
            old = tmp / ".old"
            os.replace(path, old)
        try:
            os.replace(target, path)
        except BaseException:
            if old is not None:  # put the old folder back rather than delete it with the temporary one
                os.replace(old, path)
            raise
        _fsync_dir(path.parent)
    except Exception as e:
        if is_disk_full(e):
            raise BertkitError(f"{path}: no space left on device while writing it; nothing was written "
                               "(free some space or choose another folder)") from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: object, sort_keys: bool = False) -> None:
    """`obj` as indented UTF-8 JSON, written atomically: the one way results and settings are saved."""
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=sort_keys, ensure_ascii=False) + "\n").encode("utf-8"))


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_bytes(path: str | os.PathLike, what: str = "") -> bytes:
    """A file's bytes; a missing or unreadable file is one BertkitError naming it. `what` names the
    kind of file in the message."""
    kind = f"{what} " if what else ""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise BertkitError(f"{path}: no such {kind}file") from None
    except OSError as e:
        raise BertkitError(f"{path}: cannot read {kind}({e.strerror})") from None


def read_text(path: str | os.PathLike, what: str = "", encoding: str = "utf-8") -> str:
    """A text file's contents; a missing, unreadable or non-UTF-8 file is one BertkitError naming
    the file (and the line of the first bad byte). `what` names the kind of file in the message."""
    kind = f"{what} " if what else ""
    raw = read_bytes(path, what)
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise BertkitError(f"{path}:{line}: {kind + 'is ' if what else ''}not valid UTF-8") from None


def file_chunks(path: str | os.PathLike, size: int = 1 << 22) -> Iterator[bytes]:
    """The bytes of a file in chunks of `size`: what every digest here reads."""
    with open(path, "rb") as f:
        while chunk := f.read(size):
            yield chunk


def crc32c(data: bytes | memoryview, crc: int = 0) -> int:
    """CRC-32C of `data`, continuing `crc` (TFRecords, TensorFlow checkpoints and bertkit shards)."""
    if google_crc32c is None:
        raise BertkitError("TFRecords, TensorFlow checkpoints and dataset shards need google-crc32c for their "
                           "checksums (pip install google-crc32c); bertkit model folders do not")
    return google_crc32c.extend(crc, bytes(data))


def file_digest(path: str | os.PathLike, name: str = "sha256") -> str:
    """Hex digest of a file by a hashlib algorithm name (sha256, sha1, md5)."""
    h = hashlib.new(name)
    for chunk in file_chunks(path):
        h.update(chunk)
    return h.hexdigest()
