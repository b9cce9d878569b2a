"""Downloads that resume, show progress and verify, and archive unpacking that cannot escape its
folder. A leaf: it knows files and URLs, nothing of models or data."""

from __future__ import annotations

import base64
import http.client
import os
import socket
import stat
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from bertkit import BertkitError
from bertkit.io import file_digest

TIMEOUT_S = 10  # per connection attempt and per read: a host with two addresses that drop every
# packet still fails inside 30 s


def fetch(url: str, dest: str | os.PathLike, sha256: str | None = None, desc: str | None = None) -> Path:
    """Download `url` to `dest`, resuming a `dest.part` left by an interrupted run.

    The file appears at `dest` only once complete and verified: against `sha256` when given, and
    against the MD5 that Google Cloud Storage sends in `x-goog-hash` when the server sends one.
    """
    from tqdm import tqdm

    dest = Path(dest)
    if dest.exists() and (sha256 is None or file_digest(dest) == sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "bertkit"})
    except ValueError as e:  # "unknown url type": a path or a typo where a URL belongs
        raise BertkitError(f"cannot download {url!r}: {e}") from None
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the .part is already whole
            response = None
        else:
            raise BertkitError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, socket.timeout, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)  # HTTPException: the server does not speak HTTP
        raise BertkitError(f"cannot download {url}: {reason} (no network? download it elsewhere and "
                           f"place it at {dest})") from None
    if response is not None:
        if have and response.status != 206:
            have = 0  # the server ignored the range: start over
        total = response.headers.get("Content-Length")
        total = int(total) + have if total else None
        goog_md5 = _goog_md5(response.headers.get_all("x-goog-hash") or [])
        try:
            with open(part, "ab" if have else "wb") as out, tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, desc=desc or dest.name,
                    disable=None, file=sys.stderr) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
        except (OSError, socket.timeout, http.client.HTTPException) as e:
            raise BertkitError(f"download of {url} broke off ({e}); run again to resume") from None
        finally:
            response.close()
        if total is not None and part.stat().st_size != total:
            raise BertkitError(f"download of {url} ended early ({part.stat().st_size} of {total} bytes); "
                               "run again to resume")
        if goog_md5 is not None and file_digest(part, "md5") != goog_md5:
            part.unlink()
            raise BertkitError(f"download of {url} does not match the server's MD5; deleted, run again")
    if sha256 is not None and file_digest(part) != sha256:
        part.unlink()
        raise BertkitError(f"download of {url} does not match its known sha256; deleted, run again")
    os.replace(part, dest)
    return dest


def _goog_md5(values: list[str]) -> str | None:
    for value in values:
        for item in value.split(","):
            key, _, b64 = item.strip().partition("=")
            if key == "md5":
                return base64.b64decode(b64).hex()
    return None


def _safe_target(root: Path, name: str, archive: Path) -> Path:
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise BertkitError(f"{archive}: member {name!r} has an absolute path; refusing to unpack")
    if ".." in name.replace("\\", "/").split("/"):  # a Windows separator is one on Windows: refuse its escape too
        raise BertkitError(f"{archive}: member {name!r} would land outside {root}; refusing to unpack")
    target = (root / name).resolve()
    if target != root and root not in target.parents:
        raise BertkitError(f"{archive}: member {name!r} would land outside {root}; refusing to unpack")
    return target


def extract(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Unpack a zip or tar archive into `target`. Every member is checked before anything is
    written: absolute paths, `..` escapes, links and device files are refused."""
    archive, root = Path(archive), Path(target)
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                _safe_target(root, info.filename, archive)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise BertkitError(f"{archive}: member {info.filename!r} is a symbolic link; refusing to unpack")
            try:
                z.extractall(root)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise BertkitError(f"{archive}: corrupt zip ({e})") from None
        return root
    try:
        with tarfile.open(archive) as t:
            members = t.getmembers()
            for m in members:
                _safe_target(root, m.name, archive)
                if not (m.isfile() or m.isdir()):
                    raise BertkitError(f"{archive}: member {m.name!r} is a link or special file; refusing to unpack")
            # The "data" filter (Python 3.12, backported to 3.8.17+) re-checks every member as it is written.
            t.extractall(root, members=members, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    except tarfile.TarError as e:
        raise BertkitError(f"{archive}: not a zip or tar archive ({e})") from None
    return root
