"""The bertkit model folder: `model.safetensors` (bertkit parameter names), `bert_config.json`
(Google's keys), `vocab.txt`, and `bertkit.json` (tokenizer casing and the sha256 of each file); a
fine-tuned model adds `task.json`, its task record (task_record.py), read back by `load_task`.

The folder is written under a temporary name and renamed, and every file is checked against
`bertkit.json` on load, so a crash or a flipped byte never passes for a model. Loading never
unpickles anything. A training checkpoint (`ckpt-<step>`) adds the optimizer state and the loop
position (saved on the run's cadence by train.CheckpointManager).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bertkit import BertkitError
from bertkit.config import BertConfig
from bertkit.io import atomic_path, file_digest
from bertkit.task_record import TaskRecord

WEIGHTS = "model.safetensors"
CONFIG = "bert_config.json"
VOCAB = "vocab.txt"
META = "bertkit.json"
TASK = "task.json"


def save_model(folder: str | os.PathLike, config: BertConfig, state_dict: dict[str, torch.Tensor],
               vocab_file: str | os.PathLike, lowercase: bool = True, extra: dict | None = None,
               files: dict[str, Callable[[Path], None]] | None = None, task: TaskRecord | None = None) -> Path:
    """Write a model folder atomically. `state_dict` uses bertkit names; tensors are saved as they
    are (cast them first to change the dtype). `files` adds more files: name -> function writing it
    to the path it is given; they are checksummed like the rest. `task` is written as task.json."""
    folder = Path(folder)
    if task is not None:
        files = {TASK: lambda p: p.write_text(task.to_json(), encoding="utf-8"), **(files or {})}
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
                "sha256": {name: file_digest(tmp / name) for name in names}}
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
    except (OSError, ValueError, RecursionError) as e:
        raise BertkitError(f"{meta_path}: unreadable ({e})") from None
    outside = [n for n in meta["sha256"] if not isinstance(n, str) or Path(n).name != n or n in ("", ".", "..")]
    if outside:
        raise BertkitError(f"{meta_path}: lists {outside[0]!r:.60}, not a file of the folder")
    for name in {WEIGHTS: 0, CONFIG: 0, VOCAB: 0, **meta["sha256"]}:
        path = folder / name
        if not path.is_file():
            raise BertkitError(f"{path}: missing from the model folder")
        if verify and file_digest(path) != meta["sha256"].get(name):
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
    check_shapes(config, state, str(folder / WEIGHTS), str(folder / CONFIG))
    return config, state, folder / VOCAB, meta


def load_task(folder: str | os.PathLike, verify: bool = True) -> TaskRecord | None:
    """The task record (task.json) of a model folder, checked against bertkit.json; None for a folder
    without one (a pretrained model, or one fine-tuned before bertkit wrote task records)."""
    folder = Path(folder)
    meta = verify_folder(folder, verify=False)
    path = folder / TASK
    if TASK not in meta["sha256"]:
        if path.exists():
            raise BertkitError(f"{path}: not listed in {META} (a file added to the folder by hand?)")
        return None
    if not path.is_file():
        raise BertkitError(f"{path}: missing from the model folder")
    if verify and file_digest(path) != meta["sha256"][TASK]:
        raise BertkitError(f"{path}: sha256 does not match {META} (corrupt or modified file)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BertkitError(f"{path}: unreadable ({e})") from None
    return TaskRecord.from_json(text, str(path))


def expected_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every weight that `config` fixes, by bertkit name (classifier heads excepted:
    their number of labels is free)."""
    h, v, i = config.hidden_size, config.vocab_size, config.intermediate_size
    shapes = {"bert.embeddings.word.weight": (v, h),
              "bert.embeddings.position.weight": (config.max_position_embeddings, h),
              "bert.embeddings.token_type.weight": (config.type_vocab_size, h),
              "bert.embeddings.norm.weight": (h,), "bert.embeddings.norm.bias": (h,),
              "bert.pooler.weight": (h, h), "bert.pooler.bias": (h,),
              "mlm.transform.weight": (h, h), "mlm.transform.bias": (h,), "mlm.norm.weight": (h,),
              "mlm.norm.bias": (h,), "mlm.bias": (v,), "nsp.weight": (2, h), "nsp.bias": (2,),
              "qa.weight": (2, h), "qa.bias": (2,)}
    for n in range(config.num_hidden_layers):
        layer = {"query": (h, h), "key": (h, h), "value": (h, h), "out": (h, h), "up": (i, h), "down": (h, i)}
        for name, shape in layer.items():
            shapes[f"bert.layers.{n}.{name}.weight"] = shape
            shapes[f"bert.layers.{n}.{name}.bias"] = shape[:1]
        for norm in ("attn_norm", "ffn_norm"):
            shapes[f"bert.layers.{n}.{norm}.weight"] = shapes[f"bert.layers.{n}.{norm}.bias"] = (h,)
    return shapes


def check_shapes(config: BertConfig, state: dict[str, torch.Tensor], source: str, config_source: str = "the config"
                 ) -> None:
    """Refuse weights that do not fit `config` (a config from another model, a vocabulary of another
    size, a damaged file rewritten with its checksum): one line naming the file and the first misfit."""
    want = expected_shapes(config)
    rank = {name: i for i, name in enumerate(want)}  # report the embeddings first: the likeliest misfit
    for name in sorted(state, key=lambda n: rank.get(n, len(rank))):
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise BertkitError(f"{source}: {name} is not a floating-point tensor")
        shape = tuple(tensor.shape)
        if name in want and shape != want[name]:
            raise BertkitError(f"{source}: {name} has shape {shape}, but {config_source} implies {want[name]} "
                               "(weights and config of different models)")
        weight = name.endswith(".weight")
        if name.startswith("classifier.") and (len(shape) != (2 if weight else 1) or (
                weight and shape[1] != config.hidden_size)):
            raise BertkitError(f"{source}: {name} has shape {shape}, which does not fit hidden_size "
                               f"{config.hidden_size} of {config_source}")


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
                  optimizer_state: dict, trainer: dict, keep_last: int = 3, task: TaskRecord | None = None) -> Path:
    """Write `ckpt-<step>` (a model folder that also holds the optimizer state and the loop
    position, and the task record when given), then delete all but the newest `keep_last` checkpoints."""
    for stale in Path(output_dir).glob(".ckpt-*.tmp"):  # left by a process killed while writing
        shutil.rmtree(stale, ignore_errors=True)
    folder = save_model(
        checkpoint_dir(output_dir, step), config, state_dict, vocab_file, lowercase,
        extra={"step": step},
        files={OPTIMIZER: lambda p: _torch_save(optimizer_state, p),
               TRAINER: lambda p: p.write_text(json.dumps({"step": step, **trainer}, indent=2) + "\n")},
        task=task)
    if keep_last > 0:
        for old in list_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def load_pickle(path: str | os.PathLike):
    """A torch.save file, unpickled with weights_only: tensors, numbers, strings and containers
    come back; anything else (a call to exec, an arbitrary class) is refused, never run."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for a refused pickle
        # torch's message is many lines of advice (with terminal colours); keep only the cause.
        lines = [x.strip() for x in str(e).split("WeightsUnpickler error:")[-1].splitlines() if x.strip()]
        why = lines[0].split(". ")[0].rstrip(".") if lines else type(e).__name__
        raise BertkitError(f"{path}: refused to load ({why}); only plain tensors are unpickled, "
                           "never code") from None


def _torch_save(obj, path: Path) -> None:
    # Through a Python file, so that a full disk surfaces as OSError(ENOSPC) in the error chain
    # (given a path, torch reports only "unexpected pos").
    with open(path, "wb") as f:
        torch.save(obj, f)


def load_training(folder: str | os.PathLike) -> tuple[BertConfig, dict[str, torch.Tensor], dict, dict]:
    """(config, model state, optimizer state, trainer dict) of a training checkpoint, verified."""
    config, state, _, meta = load_model_folder(folder)
    folder = Path(folder)
    for name in (OPTIMIZER, TRAINER):
        if name not in meta["sha256"]:
            raise BertkitError(f"{folder}: a model folder, not a training checkpoint (no {name})")
    optimizer_state = load_pickle(folder / OPTIMIZER)
    try:
        trainer = json.loads((folder / TRAINER).read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise BertkitError(f"{folder / TRAINER}: unreadable ({e})") from None
    if not isinstance(trainer, dict) or not isinstance(trainer.get("step"), int) or trainer["step"] < 0:
        raise BertkitError(f"{folder / TRAINER}: no step count in it")
    if not isinstance(optimizer_state, dict) or not {"state", "param_groups"} <= set(optimizer_state):
        raise BertkitError(f"{folder / OPTIMIZER}: not an optimizer state")
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


# ---- checkpoint paths as TensorFlow names them -------------------------------------------------

_TF_FILE = re.compile(r"\.(index|data-\d+-of-\d+)$")  # what follows a prefix in its files' names
_TF_STEP = re.compile(r"^model\.ckpt-(\d+)$")  # Estimator's name for the checkpoint of step N


def is_tf_prefix(path: str | os.PathLike) -> bool:
    """True when `path` is a TensorFlow checkpoint prefix: PATH.index is a file."""
    return Path(f"{path}.index").is_file()


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """Where a checkpoint given on a command line is, for every command that takes one.

    A training output folder stands for its newest valid checkpoint; any other existing folder or
    file for itself. Otherwise, as TensorFlow scripts name them:
    `DIR/PREFIX` (or `DIR/PREFIX.index`, `DIR/PREFIX.data-00000-of-00001`) is a TensorFlow
    checkpoint prefix when `DIR/PREFIX.index` exists (Google's `.../bert_model.ckpt`), and
    `DIR/model.ckpt-N` is the step-N checkpoint `DIR/ckpt-0000000N` of a bertkit output folder (the
    seed's phase 2 starts from `phase_1/model.ckpt-100`). Anything else is a one-line error."""
    p = Path(path)
    if p.is_dir() and not is_model_folder(p) and list_checkpoints(p):  # a training output folder
        newest = latest_checkpoint(p)
        if newest is None:
            raise BertkitError(f"{p}: holds no valid checkpoint")
        return newest
    if p.is_dir() or (p.is_file() and not _TF_FILE.search(p.name)):
        return p
    prefix = p.with_name(_TF_FILE.sub("", p.name))
    if is_tf_prefix(prefix):
        return prefix
    if glob.glob(glob.escape(str(prefix)) + ".data-*"):
        raise BertkitError(f"{path}: a TensorFlow checkpoint prefix without its index ({prefix}.index is missing)")
    step = _TF_STEP.match(prefix.name)
    if step and prefix.parent.is_dir():
        folder = checkpoint_dir(prefix.parent, int(step.group(1)))
        if folder.is_dir():
            return folder
        saved = ", ".join(str(int(c.name[5:])) for c in list_checkpoints(prefix.parent)) or "none"
        raise BertkitError(f"{path}: no checkpoint of step {int(step.group(1))} in {prefix.parent} "
                           f"(steps saved there: {saved})")
    raise BertkitError(f"{path}: no such checkpoint folder or zip, nor a TensorFlow checkpoint prefix "
                       f"({prefix.name}.index is not there)")
