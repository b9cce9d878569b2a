"""The bertkit model folder: `model.safetensors` (bertkit parameter names), `bert_config.json`
(Google's keys), `vocab.txt`, and `bertkit.json` (tokenizer casing and the sha256 of each file).

The folder is written under a temporary name and renamed, and every file is checked against
`bertkit.json` on load, so a crash or a flipped byte never passes for a model. Loading never
unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bertkit import BertkitError
from bertkit.config import BertConfig
from bertkit.io import atomic_path

WEIGHTS = "model.safetensors"
CONFIG = "bert_config.json"
VOCAB = "vocab.txt"
META = "bertkit.json"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def save_model(folder: str | os.PathLike, config: BertConfig, state_dict: dict[str, torch.Tensor],
               vocab_file: str | os.PathLike, lowercase: bool = True, extra: dict | None = None,
               files: dict[str, Callable[[Path], None]] | None = None) -> Path:
    """Write a model folder atomically. `state_dict` uses bertkit names; tensors are saved as they
    are (cast them first to change the dtype). `files` adds more files: name -> function writing it
    to the path it is given; they are checksummed like the rest."""
    folder = Path(folder)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        save_file(tensors, tmp / WEIGHTS, metadata={"format": "pt"})
        config.to_json(tmp / CONFIG)
        shutil.copyfile(vocab_file, tmp / VOCAB)
        for name, write in (files or {}).items():
            write(tmp / name)
        names = [WEIGHTS, CONFIG, VOCAB, *(files or {})]
        meta = {"format": "bertkit", "version": 1, "do_lower_case": lowercase, **(extra or {}),
                "sha256": {name: sha256_file(tmp / name) for name in names}}
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def is_model_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / META).is_file()


def verify_folder(folder: str | os.PathLike, verify: bool = True) -> dict:
    """Check every file of a model folder against the sha256 table in bertkit.json; return the
    metadata. With verify=False only presence is checked."""
    folder = Path(folder)
    meta_path = folder / META
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), dict):
            raise ValueError("no sha256 table")
    except FileNotFoundError:
        raise BertkitError(f"{folder}: not a bertkit model folder (no {META})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BertkitError(f"{meta_path}: unreadable ({e})") from None
    for name in {WEIGHTS: 0, CONFIG: 0, VOCAB: 0, **meta["sha256"]}:
        path = folder / name
        if not path.is_file():
            raise BertkitError(f"{path}: missing from the model folder")
        if verify and sha256_file(path) != meta["sha256"].get(name):
            raise BertkitError(f"{path}: sha256 does not match {META} (corrupt or modified file)")
    return meta


def load_model_folder(folder: str | os.PathLike, verify: bool = True
                      ) -> tuple[BertConfig, dict[str, torch.Tensor], Path, dict]:
    """Read a model folder: (config, state dict with bertkit names, vocab path, metadata)."""
    folder = Path(folder)
    meta = verify_folder(folder, verify)
    config = BertConfig.from_json(folder / CONFIG)
    try:
        state = load_file(folder / WEIGHTS)
    except (SafetensorError, OSError, ValueError) as e:
        raise BertkitError(f"{folder / WEIGHTS}: unreadable safetensors file ({e})") from None
    return config, state, folder / VOCAB, meta


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Copy `state` into `model`, which may have a different head.

    Encoder weights must all be present with the model's shapes. Head weights that the model has
    but `state` lacks keep their fresh initialisation; weights of other heads are ignored. Returns
    the names left at their initialisation, for the caller to report.
    """
    own = model.state_dict()
    for name, tensor in state.items():
        if name in own and tuple(tensor.shape) != tuple(own[name].shape):
            raise BertkitError(f"{source}: {name} has shape {tuple(tensor.shape)}, the model "
                               f"expects {tuple(own[name].shape)} (checkpoint and config disagree)")
    missing = [k for k in own if k not in state]
    encoder_missing = [k for k in missing if k.startswith("bert.") and not k.startswith("bert.pooler.")]
    if encoder_missing:
        raise BertkitError(f"{source}: encoder weight(s) missing: {', '.join(encoder_missing[:5])}"
                           + (" ..." if len(encoder_missing) > 5 else ""))
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return missing


# ---- training checkpoints: model folder + optimizer + loop position ----------------------------

OPTIMIZER = "optimizer.pt"
TRAINER = "trainer.json"


def checkpoint_dir(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / f"ckpt-{step:08d}"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Training checkpoints in `output_dir`, oldest first. Temporary folders never match."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [p for p in out.glob("ckpt-*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def save_training(output_dir: str | os.PathLike, step: int, config: BertConfig,
                  state_dict: dict[str, torch.Tensor], vocab_file: str | os.PathLike, lowercase: bool,
                  optimizer_state: dict, trainer: dict, keep_last: int = 3) -> Path:
    """Write `ckpt-<step>` (a model folder that also holds the optimizer state and the loop
    position), then delete all but the newest `keep_last` checkpoints."""
    folder = save_model(
        checkpoint_dir(output_dir, step), config, state_dict, vocab_file, lowercase,
        extra={"step": step},
        files={OPTIMIZER: lambda p: torch.save(optimizer_state, p),
               TRAINER: lambda p: p.write_text(json.dumps({"step": step, **trainer}, indent=2) + "\n")})
    if keep_last > 0:
        for old in list_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def load_training(folder: str | os.PathLike) -> tuple[BertConfig, dict[str, torch.Tensor], dict, dict]:
    """(config, model state, optimizer state, trainer dict) of a training checkpoint, verified."""
    config, state, _, meta = load_model_folder(folder)
    folder = Path(folder)
    for name in (OPTIMIZER, TRAINER):
        if name not in meta["sha256"]:
            raise BertkitError(f"{folder}: a model folder, not a training checkpoint (no {name})")
    try:
        optimizer_state = torch.load(folder / OPTIMIZER, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for a refused pickle
        raise BertkitError(f"{folder / OPTIMIZER}: unreadable ({str(e).splitlines()[0]})") from None
    trainer = json.loads((folder / TRAINER).read_text())
    return config, state, optimizer_state, trainer


def latest_checkpoint(output_dir: str | os.PathLike, log=print) -> Path | None:
    """The newest checkpoint that passes its checksums; broken ones are reported and passed over."""
    for folder in reversed(list_checkpoints(output_dir)):
        try:
            verify_folder(folder)
            return folder
        except BertkitError as e:
            log(f"warning: skipping damaged checkpoint: {e}")
    return None
