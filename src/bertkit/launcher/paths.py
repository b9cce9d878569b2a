"""Where a launch finds its inputs: the seed's dataset layout, phase 1's last checkpoint, the initial
weights, and the pretrained model to fine-tune (downloaded once into the cache)."""

from __future__ import annotations

import os
from pathlib import Path

from bertkit import BertkitError
from bertkit.checkpoint import checkpoint_dir, is_model_folder, resolve_checkpoint, verify_folder
from bertkit.launcher.recipes import CORPUS_DIRS, Phase
from bertkit.launcher.seed_flags import say
from bertkit.pretrained import cached_model, download_model, model_name


def find_phase_data(dataset_path: str | os.PathLike, seq: int) -> tuple[Path, Path | None]:
    """(training, test or None) folders for sequence length `seq` under `dataset_path`, in the seed's
    layout `seq_len_S/books_wiki_en_corpus/{training,test}` or bertkit's wiki-only one
    (`seq_len_S/wikicorpus_en/...`). Either holds TFRecords or a bertkit dataset."""
    root = Path(dataset_path)
    tried = []
    for name in CORPUS_DIRS:
        base = root / f"seq_len_{seq}" / name
        tried.append(str(base / "training"))
        if (base / "training").exists():
            test = base / "test"
            return base / "training", test if test.exists() else None
    raise BertkitError(f"--dataset_path {dataset_path}: no data for sequence length {seq}; looked for "
                       f"{' and '.join(tried)} (make it with `bertkit data prepare`)")


def phase1_last_checkpoint(output_dir: str | os.PathLike, phase1: Phase) -> Path:
    return checkpoint_dir(Path(output_dir) / "phase_1", phase1.steps)


def check_phase1_done(output_dir: str | os.PathLike, phase1: Phase) -> Path:
    """Phase 1's last checkpoint, verified; a BertkitError (exit 2) when it is not there."""
    ckpt = phase1_last_checkpoint(output_dir, phase1)
    if not ckpt.is_dir():
        raise BertkitError(f"--run_phase2: phase 1's last checkpoint {ckpt} is not there; run phase 1 first "
                           f"(the same command without --run_phase2, with the same --output_dir)")
    verify_folder(ckpt)
    return ckpt


def init_checkpoint(path: str | None, variant: str) -> str | None:
    """--init_checkpoint_path as the seed lays it out (PATH/<variant>/...) or a checkpoint itself
    (also by its TensorFlow name: a checkpoint prefix, `model.ckpt-N`)."""
    if not path:
        return None
    p = Path(path)
    if (p / variant).is_dir():
        return str(p / variant)
    return str(checkpoint_path(path, "init_checkpoint_path"))


def checkpoint_path(path: str, name: str) -> Path:
    """A checkpoint flag's value, resolved as every command resolves one; errors name the flag."""
    try:
        return resolve_checkpoint(path)
    except BertkitError as e:
        raise BertkitError(f"--{name} {e}") from None


def pretrained_model(args) -> str:
    """The model to fine-tune: --checkpoint_folder, --bert_config_dir, else Google's checkpoint of
    the variant, downloaded once into $BERTKIT_CACHE/models (default ~/.cache/bertkit/models)."""
    if args.checkpoint_folder:
        return str(checkpoint_path(args.checkpoint_folder, "checkpoint_folder").resolve())
    if args.bert_config_dir:
        if not Path(args.bert_config_dir).exists():
            raise BertkitError(f"--bert_config_dir {args.bert_config_dir}: no such file or folder")
        return str(Path(args.bert_config_dir).resolve())
    folder = cached_model(args.model_variant)
    if is_model_folder(folder):
        return str(folder)
    say(f"downloading Google's {model_name(args.model_variant)} to {folder} (once)")
    try:
        download_model(args.model_variant, folder, overwrite=True)
    except BertkitError as e:
        raise BertkitError(f"{e}. To fine-tune without a download, give --checkpoint_folder (a bertkit, "
                           "Google or Hugging Face checkpoint)") from None
    return str(folder)


def model_ready(args) -> str | None:
    """The cached pretrained model of --model_variant when it is there, else None."""
    folder = cached_model(args.model_variant)
    return str(folder) if is_model_folder(folder) else None
