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
               vocab_file: str | os.PathLike, lowercase: bool = True, extra: dict | None = None) -> Path:
    """Write a model folder atomically. `state_dict` uses bertkit names; tensors are saved as they
    are (cast them first to change the dtype)."""
    folder = Path(folder)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        save_file(tensors, tmp / WEIGHTS, metadata={"format": "pt"})
        config.to_json(tmp / CONFIG)
        shutil.copyfile(vocab_file, tmp / VOCAB)
        meta = {"format": "bertkit", "version": 1, "do_lower_case": lowercase, **(extra or {}),
                "sha256": {name: sha256_file(tmp / name) for name in (WEIGHTS, CONFIG, VOCAB)}}
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def is_model_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / META).is_file()


def load_model_folder(folder: str | os.PathLike, verify: bool = True
                      ) -> tuple[BertConfig, dict[str, torch.Tensor], Path, dict]:
    """Read a model folder: (config, state dict with bertkit names, vocab path, metadata)."""
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
    for name in (WEIGHTS, CONFIG, VOCAB):
        path = folder / name
        if not path.is_file():
            raise BertkitError(f"{path}: missing from the model folder")
        if verify and sha256_file(path) != meta["sha256"].get(name):
            raise BertkitError(f"{path}: sha256 does not match {META} (corrupt or modified file)")
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
