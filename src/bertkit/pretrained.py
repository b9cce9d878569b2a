"""Google's pretrained BERT checkpoints: the table of names and variants, the local cache, and the
`bertkit download-model` command (fetch the zip, convert it to a bertkit folder)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from bertkit import BertkitError
from bertkit.config import BertConfig, variant
from bertkit.convert import convert
from bertkit.fetch import fetch
from bertkit.flags import ArgumentParser, flag, parse_bool


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


def cache_dir() -> Path:
    """Where downloads are kept: $BERTKIT_CACHE, else ~/.cache/bertkit."""
    return Path(os.environ.get("BERTKIT_CACHE", Path.home() / ".cache" / "bertkit"))


def cached_model(name_or_variant: str) -> Path:
    """The folder where the launcher keeps Google's converted checkpoint of a variant."""
    return cache_dir() / "models" / model_name(name_or_variant)


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
    name = model_name(name)
    output = Path(output)
    if output.exists() and not overwrite:
        raise BertkitError(f"{output}: already exists (pass --overwrite to replace it)")
    release, var = GOOGLE_MODELS[name]
    url = (base_url.rstrip("/") + "/" if base_url else f"{GOOGLE_BASE}{release}/") + f"{name}.zip"
    cache = Path(cache) if cache else cache_dir()
    zip_path = fetch(url, cache / f"{name}.zip", sha256=SHA256.get(name), desc=name)
    output.parent.mkdir(parents=True, exist_ok=True)
    # Converted beside `output`, so that the final move is a rename, never a half-done copy.
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as tmp:
        out = convert(zip_path, Path(tmp) / "model")
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
    p = ArgumentParser(prog="bertkit download-model", description=(
        "Download one of Google's pretrained BERT checkpoints and convert it to a bertkit folder. "
        "Also takes the seed's form: BASE_URL NAME [IS_WWM]."))
    p.add_argument("args", nargs="+", metavar="NAME",
                   help=f"model name or variant: {', '.join(f'{n} ({v})' for n, (_, v) in GOOGLE_MODELS.items())}")
    p.add_argument("--output", "-o", help="Folder to write (default: ./NAME).")
    p.add_argument("--cache", help="Where the zip is kept (default: $BERTKIT_CACHE or ~/.cache/bertkit).")
    flag(p, "overwrite", type=parse_bool, default=False,
         help="Replace --output if it exists (`--overwrite` or `--overwrite true`, as in every command).")
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
