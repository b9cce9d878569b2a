"""What the fine-tuning tasks share: their common flags and typed settings (`FinetuneSettings`), the
model, recipe and processes (`setup`, `build`), and training with the one loop (`train`). A task
evaluates with `train.infer` and runs as a command under `tasks.common.run_command`."""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from torch import nn

from bertkit import BertkitError
from bertkit.checkpoint import load_weights
from bertkit.config import VARIANTS, BertConfig
from bertkit.distributed import Dist, init, parallelize
from bertkit.flags import flag, parse_bool
from bertkit.optim import WarmupPolyDecay, long_warmup_note, make_finetune_optimizer
from bertkit.ranks import env_ranks
from bertkit.stream import Stream
from bertkit.task_record import TaskRecord
from bertkit.tasks.common import (ModelSettings, RunSettings, add_run_flags, open_log, resolve_model,
                                  settings_record, start_or_resume)
from bertkit.tasks.finetune.batching import length_grouped_order
from bertkit.tasks.finetune.recipes import GOOGLE, SMALL_MODEL_PARAMS, choose_recipe
from bertkit.tokenizer import WordPiece
from bertkit.train import CheckpointManager, LoopConfig, StopFlag, fit


def add_flags(p, task: str, max_seq_length: int, task_name: bool = True) -> None:
    """The flags every fine-tuning task shares: the seed's names, in snake_case or kebab-case.
    `task` picks the recipe the help quotes; `task_name=False` leaves --task_name to the command."""
    g = GOOGLE[task]
    if task_name:
        flag(p, "task_name", default=task, help="The task (the seed's run_classifier.py flag): MRPC or squad.")
    flag(p, "init_checkpoint", default=None, help=(
        "Start from these weights: a bertkit checkpoint folder, a training output folder (its newest "
        "checkpoint; OUTPUT_DIR/model.ckpt-N for step N), a Google checkpoint (zip, folder or prefix "
        ".../bert_model.ckpt) or a Hugging Face folder. A fine-tuned "
        "checkpoint brings its task head too (for --do_train=false evaluation)."))
    flag(p, "bert_config_file", default=None, help=(
        f"bert_config.json or a variant name ({', '.join(VARIANTS)}); default: the init checkpoint's. "
        "Must match the checkpoint when both are given."))
    flag(p, "vocab_file", default=None, help="vocab.txt (default: the init checkpoint's, else Google's uncased vocab).")
    flag(p, "do_lower_case", type=parse_bool, default=None,
         help="Lower-case and strip accents before WordPiece (default: what the checkpoint records; uncased).")
    flag(p, "max_seq_length", type=int, default=max_seq_length,
         help="Longest sequence after WordPiece; longer inputs are cut. Batches are padded only to their own longest.")
    flag(p, "train_batch_size", type=int, default=None,
         help="Sequences per training batch, per process (default 32, or the small-model recipe).")
    flag(p, "eval_batch_size", type=int, default=32, help="Sequences per evaluation batch, per process.")
    flag(p, "predict_batch_size", dest="eval_batch_size", type=int, help="Same as --eval_batch_size (run_squad.py's name).")
    flag(p, "learning_rate", type=float, default=None, help=(
        f"Peak AdamW learning rate, one for every layer as in Google's scripts (default {g.learning_rate:g}; "
        f"for encoders under {SMALL_MODEL_PARAMS // 10**6}M parameters, the small-model recipe, whose layer-wise "
        "decay and batch size apply with it only when this flag is left out)."))
    flag(p, "num_train_epochs", type=float, default=None, help=(
        f"Passes over the training examples (default {g.num_train_epochs:g}, or the small-model recipe); "
        "steps = int(examples / global batch * epochs), as Google computes them."))
    flag(p, "warmup_proportion", type=float, default=None,
         help=(
        f"Share of the steps with linear warmup; linear decay to 0 after (default {g.warmup_proportion:g}). "
        "Over 1, the rate stays in warm-up for the whole run (with a note)."))
    flag(p, "layerwise_lr_decay", type=float, default=None, help=(
        "Each layer below the top learns at this factor of the one above (the embeddings lowest); "
        "1 (default) gives every layer the same rate."))
    flag(p, "weight_decay", type=float, default=0.01, help="AdamW weight decay, except biases and LayerNorm.")
    flag(p, "max_grad_norm", type=float, default=1.0, help="Clip gradients to this global norm (0: no clipping).")
    flag(p, "group_by_length", type=parse_bool, default=None, help=(
        "Batch training sequences of similar length together (less padding, faster), still in a "
        "random order of batches each epoch."))
    flag(p, "do_train", type=parse_bool, default=True, help="Fine-tune (default true).")
    flag(p, "save_checkpoints_steps", type=int, default=1000, help="Checkpoint every N steps, and at the end.")
    flag(p, "use_horovod", type=parse_bool, default=False, help=(
        "Accepted for the seed's command lines: processes and ranks come from the launcher "
        "(torchrun, mpirun, srun), with or without it."))
    flag(p, "horovod", dest="use_horovod", type=parse_bool, help="Same as --use_horovod.")
    add_run_flags(p)


@dataclass(frozen=True)
class FinetuneSettings:
    """What every fine-tuning task shares, from the flags `add_flags` adds (same names, see their
    help), checked before any work starts. The optimisation settings left None take the recipe
    (`resolved`); the resolved settings are recorded in OUTPUT_DIR/run.json."""

    task: str  # mrpc, squad, a GLUE task (cola, sst2, ..., xnli), classify or ner
    max_seq_length: int
    train_batch_size: int | None
    eval_batch_size: int
    learning_rate: float | None
    num_train_epochs: float | None
    warmup_proportion: float | None
    layerwise_lr_decay: float | None
    weight_decay: float
    max_grad_norm: float
    group_by_length: bool | None
    do_train: bool
    save_checkpoints_steps: int
    model: ModelSettings
    run: RunSettings

    def __post_init__(self) -> None:
        for name in ("train_batch_size", "eval_batch_size", "max_seq_length", "save_checkpoints_steps"):
            value = getattr(self, name)  # None: left to the recipe
            if value is not None and value < 1:
                raise BertkitError(f"--{name} must be >= 1, got {value}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise BertkitError(f"--learning_rate must be > 0, got {self.learning_rate}")
        if self.num_train_epochs is not None and not self.num_train_epochs > 0:
            raise BertkitError(f"--num_train_epochs must be > 0, got {self.num_train_epochs}")
        if self.warmup_proportion is not None and not self.warmup_proportion >= 0:  # over 1: a note, as in pretraining
            raise BertkitError(f"--warmup_proportion must be >= 0, got {self.warmup_proportion}")
        if self.layerwise_lr_decay is not None and not 0 < self.layerwise_lr_decay <= 1:
            raise BertkitError(f"--layerwise_lr_decay must be in (0, 1], got {self.layerwise_lr_decay}")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise BertkitError("--weight_decay and --max_grad_norm must be >= 0")
        if not self.model.init_checkpoint and not self.model.bert_config_file:
            raise BertkitError("give --init_checkpoint (pretrained weights) or --bert_config_file")

    @classmethod
    def from_args(cls, args, task: str) -> FinetuneSettings:
        """The settings of a task's parsed flags; `task` as the messages name it (MRPC, SQuAD, SST-2).
        The task's name is bertkit's: lower case, no hyphen (sst2)."""
        named = getattr(args, "task_name", task)
        if named.lower().replace("-", "") != task.lower().replace("-", ""):
            raise BertkitError(f"--task_name={named}: this command fine-tunes {task}")
        own = {f.name: getattr(args, f.name) for f in fields(cls) if f.name not in ("task", "model", "run")}
        return cls(task.lower().replace("-", ""), **own, model=ModelSettings.from_args(args),
                   run=RunSettings.from_args(args))

    def resolved(self, config: BertConfig, log: Callable[[str], None]) -> FinetuneSettings:
        """These settings with the recipe's values where they were left unset."""
        return dataclasses.replace(self, **choose_recipe(self, config, log))


def say(msg: str) -> None:
    """Print a note on stderr, from the main process only."""
    if env_ranks()[0] == 0:
        print(msg, file=sys.stderr, flush=True)


@dataclass
class Setup:
    d: Dist
    settings: FinetuneSettings  # with the recipe's values filled in
    config: BertConfig
    state: dict | None  # initial weights (bertkit names), or None to start from random ones
    vocab_file: Path
    lowercase: bool
    tokenizer: WordPiece
    init_task: TaskRecord | None = None  # the task record of a fine-tuned --init_checkpoint


def setup(fs: FinetuneSettings, log=say) -> Setup:
    """Resolve the model shape, weights, vocabulary and recipe, then join the process group."""
    m = resolve_model(fs.model, fs.max_seq_length)
    if m.state is None:
        log("warning: no --init_checkpoint: fine-tuning starts from random weights")
    fs = fs.resolved(m.config, log)
    d = init(fs.run.device, tf32=fs.run.tf32)
    return Setup(d, fs, m.config, m.state, m.vocab_file, m.lowercase, WordPiece(m.vocab_file, lowercase=m.lowercase),
                 m.task)


def build(model: nn.Module, st: Setup, log=say) -> nn.Module:
    """Load the initial weights into `model` (a task head over the encoder); report fresh heads."""
    fs = st.settings
    model.bert.unpad = fs.run.unpad
    if st.state is not None:
        fresh = load_weights(model, st.state, str(fs.model.init_checkpoint))
        heads = [k for k in fresh if not k.startswith("bert.")]
        if heads and not fs.do_train:
            log(f"warning: {fs.model.init_checkpoint} has no trained task head ({', '.join(heads)}): "
                "evaluating a randomly initialised head")
        elif fresh:
            log(f"initialised fresh: {', '.join(fresh)}")
    return model


def run_id(st: Setup, files: dict) -> dict:
    """What makes two runs the same run (a resume must match it)."""
    fs = st.settings
    keys = ("max_seq_length", "train_batch_size", "learning_rate", "num_train_epochs", "warmup_proportion",
            "layerwise_lr_decay", "weight_decay", "max_grad_norm", "group_by_length")
    return {"task": fs.task, "config": st.config.to_dict(), "world_size": st.d.world_size,
            **{k: getattr(fs, k) for k in keys}, "seed": fs.run.seed, "precision": fs.run.precision,
            "init_checkpoint": fs.model.init_checkpoint, "do_lower_case": fs.model.do_lower_case,
            **{k: str(v) for k, v in files.items()}}


def train_steps(num_examples: int, global_batch: int, epochs: float) -> int:
    """Google's count: int(num_examples / global batch * epochs)."""
    return int(num_examples / global_batch * epochs)


def train(model: nn.Module, features: Sequence, collate: Callable, loss_fn: Callable, num_examples: int,
          st: Setup, run: dict, stop: StopFlag, eval_fn: Callable | None = None, eval_every: int = 0,
          task: TaskRecord | None = None) -> tuple[nn.Module, dict]:
    """Fine-tune `model` on `features` (a list the collate function batches) with the one training
    loop; the checkpoint at the end goes to --output_dir, with `task` as its task.json. With
    `eval_fn`, the model is also scored every `eval_every` steps (into the log). Returns the model
    (wrapped for the processes) and a summary: steps, seconds spent training, the last logged record."""
    d, fs, rs = st.d, st.settings, st.settings.run
    global_batch = fs.train_batch_size * d.world_size
    steps = train_steps(num_examples, global_batch, fs.num_train_epochs)
    if steps < 1:
        raise BertkitError(f"{num_examples} training examples at a global batch of {global_batch} for "
                           f"{fs.num_train_epochs:g} epochs make no training step")
    warmup = int(steps * fs.warmup_proportion)
    log = open_log(rs.output_dir, rs.dllog_path, d, steps, f"finetune {fs.task}", parameters=settings_record(fs))
    ckpt = CheckpointManager(rs.output_dir, st.config, st.vocab_file, st.lowercase, run, fs.save_checkpoints_steps,
                             rs.keep_checkpoints, task)
    optimizer, start, scaler_state = start_or_resume(
        model, lambda m: make_finetune_optimizer(m, fs.learning_rate, fs.weight_decay, fs.layerwise_lr_decay),
        ckpt, fs, d, log)
    net = parallelize(model, d, compile=rs.compile)

    order = None
    if fs.group_by_length:
        lengths = np.array([len(f.input_ids) for f in features])
        order = lambda epoch: length_grouped_order(lengths, global_batch, rs.seed, epoch)  # noqa: E731
    stream = Stream(features, fs.train_batch_size, collate, seed=rs.seed, rank=d.rank,
                    world_size=d.world_size, order=order)
    loop = LoopConfig(total_steps=steps, lr=fs.learning_rate,
                      schedule=WarmupPolyDecay(warmup, steps, power=1.0, continuous=True),
                      precision=rs.precision, max_grad_norm=fs.max_grad_norm or None, log_every=rs.log_every,
                      seed=rs.seed, eval_every=eval_every, skip_nonfinite=rs.skip_nonfinite,
                      fp32_modules=rs.fp32_modules)
    if long_warmup_note(warmup, steps):
        log.print(long_warmup_note(warmup, steps))
    log.print(f"fine-tuning {st.config.num_hidden_layers}L/{st.config.hidden_size}H on {num_examples} examples "
              f"({len(features)} sequences), {steps} steps ({warmup} warmup) of global batch {global_batch} "
              f"= {fs.train_batch_size} x {d.world_size} process(es); lr {fs.learning_rate:g}, "
              f"{d.device.type}, {rs.precision}")
    t0 = time.perf_counter()
    last = fit(net, optimizer, loss_fn, stream, loop, d, log, ckpt, start, eval_fn=eval_fn,
               grad_scaler_state=scaler_state, stop=stop)
    seconds = time.perf_counter() - t0
    log.close({"train_seconds": round(seconds, 3), **last})
    return net, {"steps": steps, "warmup_steps": warmup, "train_seconds": round(seconds, 3),
                 "resumed_from_step": start, "global_batch": global_batch, **{f"last_{k}": v for k, v in last.items()}}
