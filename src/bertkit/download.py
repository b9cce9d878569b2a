"""Downloads that resume, show progress and verify, and archive unpacking that cannot escape its
folder. Also the `bertkit download-model` command for Google's pretrained checkpoints."""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import shutil
import socket
import stat
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from bertkit import BertkitError

TIMEOUT_S = 10  # per connection attempt and per read: a host with two addresses that drop every
# packet still fails inside 30 s


def fetch(url: str, dest: str | os.PathLike, sha256: str | None = None, desc: str | None = None) -> Path:
    """Download `url` to `dest`, resuming a `dest.part` left by an interrupted run.

    The file appears at `dest` only once complete and verified: against `sha256` when given, and
    against the MD5 that Google Cloud Storage sends in `x-goog-hash` when the server sends one.
    """
    from tqdm import tqdm

    dest = Path(dest)
    if dest.exists() and (sha256 is None or _sha256(dest) == sha256):
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
        if goog_md5 is not None and _digest(part, "md5") != goog_md5:
            part.unlink()
            raise BertkitError(f"download of {url} does not match the server's MD5; deleted, run again")
    if sha256 is not None and _sha256(part) != sha256:
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


def _digest(path: Path, name: str) -> str:
    h = hashlib.new(name)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _sha256(path: Path) -> str:
    return _digest(path, "sha256")


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


# ---- Google's pretrained checkpoints -----------------------------------------------------------

GOOGLE_BASE = "https://storage.googleapis.com/bert_models/"
# name -> (release folder, variant). Base and large are the ones the seed's download script takes;
# the 2020 miniatures are the tiny..medium variants. Google publishes no checksums for these zips:
# the server's MD5 (x-goog-hash) and each tensor's crc32c inside the checkpoint are what we verify.
GOOGLE_MODELS: dict[str, tuple[str, str]] = {
    "uncased_L-2_H-128_A-2": ("2020_02_20", "tiny"),
    "uncased_L-4_H-256_A-4": ("2020_02_20", "mini"),
    "uncased_L-4_H-512_A-8": ("2020_02_20", "small"),
    "uncased_L-8_H-512_A-8": ("2020_02_20", "medium"),
    "uncased_L-12_H-768_A-12": ("2020_02_20", "base"),
    "wwm_uncased_L-24_H-1024_A-16": ("2019_05_30", "large"),
}
SHA256: dict[str, str] = {}  # zip name -> sha256, for copies whose digest a user has pinned


def model_name(name_or_variant: str) -> str:
    for name, (_, var) in GOOGLE_MODELS.items():
        if name_or_variant in (name, var):
            return name
    choices = ", ".join(f"{n} ({v})" for n, (_, v) in GOOGLE_MODELS.items())
    raise BertkitError(f"unknown pretrained model {name_or_variant!r}; choose from {choices}")


def download_model(name: str, output: str | os.PathLike, cache: str | os.PathLike | None = None,
                   base_url: str | None = None, overwrite: bool = False) -> Path:
    """Fetch one of Google's checkpoints and convert it to a bertkit folder at `output`. An existing
    `output` is replaced only with `overwrite`."""
    from bertkit.config import variant
    from bertkit.convert import convert

    name = model_name(name)
    output = Path(output)
    if output.exists() and not overwrite:
        raise BertkitError(f"{output}: already exists (pass --overwrite to replace it)")
    release, var = GOOGLE_MODELS[name]
    url = (base_url.rstrip("/") + "/" if base_url else f"{GOOGLE_BASE}{release}/") + f"{name}.zip"
    cache = Path(cache or os.environ.get("BERTKIT_CACHE", Path.home() / ".cache" / "bertkit"))
    zip_path = fetch(url, cache / f"{name}.zip", sha256=SHA256.get(name), desc=name)
    output.parent.mkdir(parents=True, exist_ok=True)
    # Converted beside `output`, so that the final move is a rename, never a half-done copy.
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as tmp:
        out = convert(zip_path, Path(tmp) / "model")
        from bertkit.config import BertConfig

        got = BertConfig.from_json(out / "bert_config.json")
        want = variant(var, got.vocab_size)
        if (got.num_hidden_layers, got.hidden_size, got.num_attention_heads) != (
                want.num_hidden_layers, want.hidden_size, want.num_attention_heads):
            raise BertkitError(f"{zip_path}: holds a model of another shape than {name}")
        if output.exists():
            shutil.rmtree(output)
        os.replace(out, output)
    return output


def main(argv: list[str]) -> int:
    from bertkit.cli import ArgumentParser

    p = ArgumentParser(prog="bertkit download-model", description=(
        "Download one of Google's pretrained BERT checkpoints and convert it to a bertkit folder. "
        "Also takes the seed's form: BASE_URL NAME [IS_WWM]."))
    p.add_argument("args", nargs="+", metavar="NAME",
                   help=f"model name or variant: {', '.join(f'{n} ({v})' for n, (_, v) in GOOGLE_MODELS.items())}")
    p.add_argument("--output", "-o", help="Folder to write (default: ./NAME).")
    p.add_argument("--cache", help="Where the zip is kept (default: $BERTKIT_CACHE or ~/.cache/bertkit).")
    p.add_argument("--overwrite", action="store_true", help="Replace --output if it exists.")
    args = p.parse_args(argv)
    base_url = None
    if len(args.args) == 1:
        name = args.args[0]
    elif len(args.args) in (2, 3) and "://" in args.args[0]:
        base_url, name = args.args[0], args.args[1]
        # A third argument is the seed's is_wwm flag, which the name already implies.
    else:
        raise BertkitError("expected NAME, or the seed's BASE_URL NAME [IS_WWM]")
    name = model_name(name)
    out = download_model(name, args.output or name, args.cache, base_url, args.overwrite)
    print(f"wrote {out}")
    return 0
