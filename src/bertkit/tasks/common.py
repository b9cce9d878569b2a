"""What every training task shares: the run flags and their typed settings (`RunSettings`), the
model to start from (`ModelSettings`, `resolve_model`); the output folder's rules (resume the same
run, refuse to overwrite another); the start of a training run (log, resume, optimizer) and its end
(results written, SIGTERM).

A command parses its flags into its own settings dataclass (holding these two) and stops using the
argparse namespace there: everything below it takes the typed settings."""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from bertkit import BertkitError
from bertkit.checkpoint import OPTIMIZER, latest_checkpoint, list_checkpoints
from bertkit.config import VARIANTS, BertConfig, resolve
from bertkit.data.bundled import vocab_path
from bertkit.convert import read_any, read_task
from bertkit.distributed import Dist, shutdown
from bertkit.flags import PRECISIONS, flag, parse_bool
from bertkit.io import os_error_message, write_json
from bertkit.ranks import env_ranks
from bertkit.runlog import RunLog
from bertkit.task_record import TaskRecord
from bertkit.tokenizer import load_vocab
from bertkit.train import CheckpointManager, StopFlag, Stopped


def add_run_flags(p) -> None:
    """Flags of every training command."""
    flag(p, "output_dir", required=True, help="Where checkpoints, logs and results go.")
    flag(p, "precision", choices=PRECISIONS, default=None,
         help="fp32; bf16 (autocast, fp32 master weights); fp16 (autocast with loss scaling). Default fp32.")
    flag(p, "data_type", dest="precision", choices=PRECISIONS, help="Same as --precision (the seed's name).")
    flag(p, "bf16_config_path", default=None, help=(
        "JSON file naming what stays in fp32 under bf16: {\"fp32_modules\": [\"*.attn_norm\", \"mlm.*\"]} "
        "(fnmatch patterns of module names). Habana's op-list format is refused with an explanation."))
    flag(p, "device", default="auto", help="auto (this process's GPU if any, else CPU), cpu, cuda, cuda:N, or any torch device.")
    flag(p, "seed", type=int, default=12345, help="Base seed; each rank and step derive theirs from it.")
    flag(p, "compile", type=parse_bool, default=False, help=(
        "Compile each Transformer layer with torch.compile. Off by default: not yet measured to pay on "
        "a GPU (benchmarks/gpu_check.sh measures it); on a CPU it compiles for minutes and then runs slower."))
    flag(p, "tf32", type=parse_bool, default=True, help=(
        "On CUDA, run fp32 matrix products in TF32 (default; --tf32 false for full fp32). No effect on CPUs."))
    flag(p, "unpad", type=parse_bool, default=True, help=(
        "Run batches with padding unpadded: real tokens only through every layer, attention per sequence "
        "at its own length (the same numbers, less work). --nounpad runs them padded."))
    flag(p, "resume", type=parse_bool, default=True, help=(
        "Continue from the newest valid checkpoint in --output_dir when it holds this same run (default). "
        "--noresume starts over only with --overwrite."))
    flag(p, "overwrite", type=parse_bool, default=False,
         help="Delete checkpoints in --output_dir left by another run instead of refusing to start.")
    flag(p, "keep_checkpoints", type=int, default=3, help="Keep the newest N checkpoints (0 keeps all).")
    flag(p, "log_every", type=int, default=10, help="Log a line every N steps.")
    flag(p, "dllog_path", default=None, help=(
        "Also log in NVIDIA dllogger's JSON stream format (`DLLL {json}` lines: the settings, every logged "
        "step, the summary), for the seed's tooling. OUTPUT_DIR/log.jsonl is written either way."))
    flag(p, "skip_nonfinite", type=parse_bool, default=False,
         help="Skip and count steps whose loss is NaN or infinite instead of stopping.")


@dataclass(frozen=True)
class RunSettings:
    """How a training command runs, from the flags `add_run_flags` adds (see their help)."""

    output_dir: Path
    precision: str = "fp32"
    fp32_modules: tuple[str, ...] = ()  # module-name patterns kept in fp32 (from --bf16_config_path)
    device: str = "auto"
    seed: int = 12345
    compile: bool = False
    tf32: bool = True
    unpad: bool = True
    resume: bool = True
    overwrite: bool = False
    keep_checkpoints: int = 3
    log_every: int = 10
    dllog_path: str | None = None
    skip_nonfinite: bool = False

    def __post_init__(self) -> None:  # precision: the flag's choices, and LoopConfig, check it
        if self.keep_checkpoints < 0:
            raise BertkitError(f"--keep_checkpoints must be >= 0, got {self.keep_checkpoints}")
        if self.log_every < 1:
            raise BertkitError(f"--log_every must be >= 1, got {self.log_every}")

    @classmethod
    def from_args(cls, args, default_precision: str = "fp32") -> RunSettings:
        precision = args.precision or default_precision
        return cls(Path(args.output_dir), precision, fp32_patterns(args.bf16_config_path, precision), args.device,
                   args.seed, args.compile, args.tf32, args.unpad, args.resume, args.overwrite,
                   args.keep_checkpoints, args.log_every, args.dllog_path, args.skip_nonfinite)


@dataclass(frozen=True)
class ModelSettings:
    """Which model a task starts from: --bert_config_file, --init_checkpoint, --vocab_file,
    --do_lower_case (None: what the checkpoint records)."""

    bert_config_file: str | None = None  # bert_config.json or a variant name
    init_checkpoint: str | None = None
    vocab_file: str | None = None
    do_lower_case: bool | None = None

    @classmethod
    def from_args(cls, args) -> ModelSettings:
        return cls(args.bert_config_file, args.init_checkpoint, args.vocab_file, args.do_lower_case)


def settings_record(settings) -> dict:
    """A settings dataclass as one flat JSON-able dict (nested settings inlined), as the run's
    outputs record it (run.json's "settings", the dllog's PARAMETER line)."""
    out = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value):
            out.update(settings_record(value))
        else:
            out[f.name] = str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value
    return out


def fp32_patterns(path: str | None, precision: str) -> tuple[str, ...]:
    """Module-name patterns from --bf16_config_path. Never silently ignored: a file in another format
    is refused, and a file given with fp32 precision draws a warning."""
    if not path:
        return ()
    try:
        d = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise BertkitError(f"--bf16_config_path: {path}: no such file") from None
    except (OSError, ValueError) as e:
        raise BertkitError(f"--bf16_config_path: {path}: not JSON ({e})") from None
    if not isinstance(d, dict) or "fp32_modules" not in d:
        if isinstance(d, dict) and {"allowlist", "conditional_list"} & set(d):
            raise BertkitError(f"--bf16_config_path: {path} is Habana's TensorFlow op-list format, which names "
                               "TF ops; bertkit takes {\"fp32_modules\": [patterns of module names]}")
        raise BertkitError(f"--bf16_config_path: {path}: expected {{\"fp32_modules\": [...]}}")
    unknown = set(d) - {"fp32_modules", "comment"}
    if unknown:
        raise BertkitError(f"--bf16_config_path: {path}: unknown key(s) {', '.join(sorted(unknown))}")
    patterns = d["fp32_modules"]
    if not isinstance(patterns, list) or not all(isinstance(x, str) for x in patterns):
        raise BertkitError(f"--bf16_config_path: {path}: fp32_modules must be a list of strings")
    if precision == "fp32":
        print("warning: --bf16_config_path has no effect with fp32 precision", file=sys.stderr)
    return tuple(patterns)


def prepare_output_dir(output_dir: Path, run: dict, resume: bool, overwrite: bool, is_main: bool,
                       log=print) -> Path | None:
    """Return the checkpoint to resume from, or None to start fresh (log.jsonl then starts empty).
    Checkpoints of a different run (or any run, with --noresume) are refused unless --overwrite,
    which deletes them."""
    existing = list_checkpoints(output_dir)
    if existing:
        saved = _saved_run(output_dir)
        same = saved is not None and {k: v for k, v in saved.items() if k not in VOLATILE} == {
            k: v for k, v in run.items() if k not in VOLATILE}
        if resume and same:
            found = latest_checkpoint(output_dir, log=log)
            if found is not None:
                return found
        if not overwrite:
            if not same:
                why = f"of another run ({_difference(saved, run)})"
            elif resume:
                why = "of this run, but none of them passes its checksums"
            else:
                why = "of this run, and --noresume was given"
            raise BertkitError(f"{output_dir} holds checkpoints {why}; pass --overwrite "
                               "to delete them or choose another --output_dir")
        if is_main:
            for folder in existing:
                shutil.rmtree(folder)
            log(f"--overwrite: deleted {len(existing)} checkpoint(s) in {output_dir}")
    if is_main:
        write_json(Path(output_dir) / "run.json", run, sort_keys=True)
        log_file = Path(output_dir) / "log.jsonl"
        if log_file.is_file():
            # A fresh start logs from step 0: records of a run overwritten or never checkpointed go.
            # (The run's log is open for appending, so its next record lands at the new end.)
            os.truncate(log_file, 0)
    return None


# Settings that may change between a run and its resumption.
VOLATILE = {"settings", "num_train_steps", "save_checkpoints_steps", "log_every", "keep_checkpoints", "dllog_path",
            "do_eval", "eval_files_dir", "eval_batch_size", "max_eval_steps", "compile", "device", "tf32"}


def _saved_run(output_dir: Path) -> dict | None:
    try:
        return json.loads((Path(output_dir) / "run.json").read_text())
    except (OSError, ValueError, RecursionError):
        return None


def _difference(saved: dict | None, run: dict) -> str:
    if saved is None:
        return "no run.json"
    keys = sorted(k for k in set(saved) | set(run) if k not in VOLATILE and saved.get(k) != run.get(k))
    return "differs in " + ", ".join(f"{k}: {saved.get(k)!r} -> {run.get(k)!r}" for k in keys[:4])


def initial_weights(init_checkpoint: str | None, do_lower_case: bool
                    ) -> tuple[BertConfig | None, dict | None, Path | None, bool]:
    """(config, state, vocab, lowercase) of an --init_checkpoint, or (None, None, None,
    do_lower_case) without one. The checkpoint may be anything `bertkit convert` reads (a training
    output folder among them: its newest valid checkpoint)."""
    if not init_checkpoint:
        return None, None, None, do_lower_case
    work = tempfile.mkdtemp(prefix="bertkit-init-")  # a zip unpacks here; its vocab is used all run
    atexit.register(shutil.rmtree, work, True)
    return read_any(init_checkpoint, work)


@dataclass
class StartingModel:
    """The model a task builds: its shape, initial weights (or None), vocabulary and casing."""

    config: BertConfig
    state: dict | None
    vocab_file: Path
    lowercase: bool
    task: TaskRecord | None = None  # the task record of a fine-tuned --init_checkpoint


def resolve_model(m: ModelSettings, max_seq_length: int, more_vocabs: tuple[Path | None, ...] = ()
                  ) -> StartingModel:
    """The shape, weights and vocabulary a task starts from, checked against each other: the
    config is --bert_config_file's, else the checkpoint's; the vocabulary is --vocab_file, else the
    checkpoint's, else the first of `more_vocabs` that exists, else Google's uncased one. A variant
    name takes the vocabulary's size."""
    init_config, state, init_vocab, lowercase = initial_weights(m.init_checkpoint, True)
    if m.do_lower_case is not None:
        lowercase = m.do_lower_case
    config = resolve(m.bert_config_file) if m.bert_config_file else init_config
    if config is None:
        raise BertkitError("give --bert_config_file (a file or variant name) or --init_checkpoint")
    found = [v for v in (init_vocab, *more_vocabs) if v is not None and v.is_file()]
    vocab_file = Path(m.vocab_file) if m.vocab_file else (found[0] if found else vocab_path())
    tokens = len(load_vocab(vocab_file))
    if m.bert_config_file in VARIANTS and tokens != config.vocab_size:
        config = dataclasses.replace(config, vocab_size=tokens)
    if tokens != config.vocab_size:
        raise BertkitError(f"{vocab_file}: {tokens} tokens, but the model has vocab_size {config.vocab_size}")
    if init_config is not None and config != init_config:
        raise BertkitError(f"--bert_config_file {m.bert_config_file} describes another model shape than "
                           f"--init_checkpoint {m.init_checkpoint}")
    if max_seq_length > config.max_position_embeddings:
        raise BertkitError(f"--max_seq_length {max_seq_length} exceeds the model's "
                           f"max_position_embeddings {config.max_position_embeddings}")
    return StartingModel(config, state, vocab_file, lowercase,
                         read_task(m.init_checkpoint) if m.init_checkpoint else None)


def open_log(output_dir: Path, dllog_path: str | None, d: Dist, total_steps: int, desc: str,
             parameters: dict | None = None) -> RunLog:
    """The run's log (OUTPUT_DIR/log.jsonl), progress bar and TensorBoard; with --dllog_path also
    NVIDIA dllogger's stream there, opened with the run's settings (`parameters`)."""
    return RunLog(output_dir / "log.jsonl", d.is_main, total=total_steps, tensorboard_dir=output_dir / "tensorboard",
                  desc=desc, dllog_path=dllog_path, parameters=parameters)


def start_or_resume(model: nn.Module, make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
                    ckpt: CheckpointManager, settings, d: Dist, log: RunLog
                    ) -> tuple[torch.optim.Optimizer, int, dict | None]:
    """Apply the output folder's rules (OUTPUT_DIR/run.json then records the run and its resolved
    `settings`, a command's settings dataclass), then either start fresh or load the newest
    checkpoint of this run into `model` and the optimizer: (optimizer, first step, grad-scaler
    state). The model is on its device when the optimizer is made."""
    run = {**ckpt.run, "settings": settings_record(settings)}
    resume_from = prepare_output_dir(ckpt.output_dir, run, settings.run.resume, settings.run.overwrite, d.is_main,
                                     log=log.print)
    start, optimizer_state, scaler_state = 0, None, None
    if resume_from is not None:
        start, optimizer_state, scaler_state = ckpt.load(resume_from, model)
    model.to(d.device)
    optimizer = make_optimizer(model)
    if resume_from is not None:
        try:
            optimizer.load_state_dict(optimizer_state)
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
            raise BertkitError(f"{resume_from / OPTIMIZER}: does not fit this run's optimizer "
                               f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        log.print(f"resumed from {resume_from} at step {start}")
        log.advance(start)
    return optimizer, start, scaler_state


def write_results(path: Path, results: dict, d: Dist) -> None:
    """A command's results: a JSON file in the output folder, and one JSON line on stdout."""
    if d.is_main:
        write_json(path, results)
        print(json.dumps(results))


def run_command(body: Callable[[StopFlag], int], output_dir: str | os.PathLike) -> int:
    """Run a training command's `body(stop)` with SIGTERM caught from the start: a stop after the
    checkpoint is saved returns 143, a failed write (disk full, read-only) is one line naming the
    path, and the process group is left in every case."""
    with StopFlag() as stop:
        try:
            return body(stop)
        except Stopped as e:
            if env_ranks()[0] == 0:
                print(str(e), file=sys.stderr)
            return 143
        except OSError as e:  # a write that failed: the machine's fault, not the input's
            raise BertkitError(os_error_message(e, output_dir)) from None
        finally:
            shutdown()
