"""What the fine-tuning tasks share: their common flags, the model and processes (`setup`, `build`),
training with the one loop (`train`), evaluation over all ranks (`infer`), and the SIGTERM-aware
entry (`run_main`)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from torch import nn

from bertkit import BertkitError
from bertkit.checkpoint import load_weights
from bertkit.config import VARIANTS, BertConfig, resolve
from bertkit.data.bundled import vocab_path
from bertkit.distributed import Dist, init, parallelize
from bertkit.flags import flag, parse_bool
from bertkit.optim import WarmupPolyDecay, long_warmup_note, make_finetune_optimizer
from bertkit.ranks import env_ranks
from bertkit.stream import Stream
from bertkit.tasks.common import (add_run_flags, fp32_patterns, initial_weights, open_log, run_command,
                                  start_or_resume)
from bertkit.tasks.finetune.batching import length_grouped_order
from bertkit.tasks.finetune.recipes import GOOGLE, SMALL_MODEL_PARAMS, choose_recipe
from bertkit.tokenizer import WordPiece
from bertkit.train import CheckpointManager, LoopConfig, StopFlag, fit


def add_flags(p, task: str, max_seq_length: int) -> None:
    """The flags MRPC and SQuAD share: the seed's names, in snake_case or kebab-case."""
    g = GOOGLE[task]
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


def check_flags(args, task: str) -> None:
    """What the shared flags must satisfy, checked before any work starts. `task`: MRPC or SQuAD."""
    if args.task_name.lower() != task.lower():
        raise BertkitError(f"--task_name={args.task_name}: this command fine-tunes {task}")
    args.precision = args.precision or "fp32"
    for name in ("train_batch_size", "eval_batch_size", "max_seq_length", "save_checkpoints_steps"):
        value = getattr(args, name)  # None: left to the recipe
        if value is not None and value < 1:
            raise BertkitError(f"--{name} must be >= 1, got {value}")
    if args.learning_rate is not None and not args.learning_rate > 0:
        raise BertkitError(f"--learning_rate must be > 0, got {args.learning_rate}")
    if args.num_train_epochs is not None and not args.num_train_epochs > 0:
        raise BertkitError(f"--num_train_epochs must be > 0, got {args.num_train_epochs}")
    if args.warmup_proportion is not None and not args.warmup_proportion >= 0:  # over 1: a note, as in pretraining
        raise BertkitError(f"--warmup_proportion must be >= 0, got {args.warmup_proportion}")
    if args.layerwise_lr_decay is not None and not 0 < args.layerwise_lr_decay <= 1:
        raise BertkitError(f"--layerwise_lr_decay must be in (0, 1], got {args.layerwise_lr_decay}")
    if args.weight_decay < 0 or args.max_grad_norm < 0:
        raise BertkitError("--weight_decay and --max_grad_norm must be >= 0")
    if not args.init_checkpoint and not args.bert_config_file:
        raise BertkitError("give --init_checkpoint (pretrained weights) or --bert_config_file")


def say(msg: str) -> None:
    """Print a note on stderr, from the main process only."""
    if env_ranks()[0] == 0:
        print(msg, file=sys.stderr, flush=True)


@dataclass
class Setup:
    d: Dist
    config: BertConfig
    state: dict | None  # initial weights (bertkit names), or None to start from random ones
    vocab_file: Path
    lowercase: bool
    tokenizer: WordPiece


def setup(args, task: str, log=say) -> Setup:
    """Resolve the model shape, weights and vocabulary, then join the process group."""
    init_config, state, init_vocab, lowercase = initial_weights(args.init_checkpoint, True)
    config = resolve(args.bert_config_file) if args.bert_config_file else init_config
    if init_config is not None and config != init_config:
        raise BertkitError(f"--bert_config_file {args.bert_config_file} describes another model shape than "
                           f"--init_checkpoint {args.init_checkpoint}")
    vocab_file = Path(args.vocab_file) if args.vocab_file else (init_vocab or vocab_path())
    if not vocab_file.is_file():
        raise BertkitError(f"--vocab_file: {vocab_file}: no such file")
    if args.do_lower_case is not None:
        lowercase = args.do_lower_case
    tokenizer = WordPiece(vocab_file, lowercase=lowercase)
    if len(tokenizer.vocab) != config.vocab_size:
        raise BertkitError(f"{vocab_file}: {len(tokenizer.vocab)} tokens, but the model has vocab_size "
                           f"{config.vocab_size}")
    if args.max_seq_length > config.max_position_embeddings:
        raise BertkitError(f"--max_seq_length {args.max_seq_length} exceeds the model's "
                           f"max_position_embeddings {config.max_position_embeddings}")
    if state is None:
        log("warning: no --init_checkpoint: fine-tuning starts from random weights")
    choose_recipe(args, task, config, log)
    d = init(args.device, tf32=args.tf32)
    return Setup(d, config, state, vocab_file, lowercase, tokenizer)


def build(model: nn.Module, s: Setup, args, log=say) -> nn.Module:
    """Load the initial weights into `model` (a task head over the encoder); report fresh heads."""
    model.bert.unpad = args.unpad
    if s.state is not None:
        fresh = load_weights(model, s.state, str(args.init_checkpoint))
        heads = [k for k in fresh if not k.startswith("bert.")]
        if heads and not args.do_train:
            log(f"warning: {args.init_checkpoint} has no trained task head ({', '.join(heads)}): "
                "evaluating a randomly initialised head")
        elif fresh:
            log(f"initialised fresh: {', '.join(fresh)}")
    return model


def run_id(args, task: str, s: Setup, files: dict) -> dict:
    """What makes two runs the same run (a resume must match it)."""
    keys = ("max_seq_length", "train_batch_size", "learning_rate", "num_train_epochs", "warmup_proportion",
            "layerwise_lr_decay", "weight_decay", "max_grad_norm", "group_by_length", "seed", "precision",
            "init_checkpoint", "do_lower_case")
    return {"task": task, "config": s.config.to_dict(), "world_size": s.d.world_size,
            **{k: getattr(args, k) for k in keys}, **{k: str(v) for k, v in files.items()}}


def train_steps(num_examples: int, global_batch: int, epochs: float) -> int:
    """Google's count: int(num_examples / global batch * epochs)."""
    return int(num_examples / global_batch * epochs)


def train(model: nn.Module, features: Sequence, collate: Callable, loss_fn: Callable, num_examples: int,
          args, s: Setup, run: dict, eval_fn: Callable | None = None, eval_every: int = 0
          ) -> tuple[nn.Module, dict]:
    """Fine-tune `model` on `features` (a list the collate function batches) with the one training
    loop; the checkpoint at the end goes to --output_dir. With `eval_fn`, the model is also scored
    every `eval_every` steps (into the log). Returns the model (wrapped for the processes) and a
    summary: steps, seconds spent training, the last logged record."""
    d = s.d
    out = Path(args.output_dir)
    global_batch = args.train_batch_size * d.world_size
    steps = train_steps(num_examples, global_batch, args.num_train_epochs)
    if steps < 1:
        raise BertkitError(f"{num_examples} training examples at a global batch of {global_batch} for "
                           f"{args.num_train_epochs:g} epochs make no training step")
    warmup = int(steps * args.warmup_proportion)
    log = open_log(out, args.dllog_path, d, steps, f"finetune {run['task']}", parameters=vars(args))
    ckpt = CheckpointManager(out, s.config, s.vocab_file, s.lowercase, run, args.save_checkpoints_steps,
                             args.keep_checkpoints)
    optimizer, start, scaler_state = start_or_resume(
        model, lambda m: make_finetune_optimizer(m, args.learning_rate, args.weight_decay, args.layerwise_lr_decay),
        ckpt, args.resume, args.overwrite, d, log)
    net = parallelize(model, d, compile=args.compile)

    order = None
    if args.group_by_length:
        lengths = np.array([len(f.input_ids) for f in features])
        order = lambda epoch: length_grouped_order(lengths, global_batch, args.seed, epoch)  # noqa: E731
    stream = Stream(features, args.train_batch_size, collate, seed=args.seed, rank=d.rank,
                    world_size=d.world_size, order=order)
    loop = LoopConfig(total_steps=steps, lr=args.learning_rate,
                      schedule=WarmupPolyDecay(warmup, steps, power=1.0, continuous=True),
                      precision=args.precision, max_grad_norm=args.max_grad_norm or None,
                      log_every=args.log_every, seed=args.seed, eval_every=eval_every, skip_nonfinite=args.skip_nonfinite,
                      fp32_modules=fp32_patterns(args.bf16_config_path, args.precision))
    if long_warmup_note(warmup, steps):
        log.print(long_warmup_note(warmup, steps))
    log.print(f"fine-tuning {s.config.num_hidden_layers}L/{s.config.hidden_size}H on {num_examples} examples "
              f"({len(features)} sequences), {steps} steps ({warmup} warmup) of global batch {global_batch} "
              f"= {args.train_batch_size} x {d.world_size} process(es); lr {args.learning_rate:g}, "
              f"{d.device.type}, {args.precision}")
    t0 = time.perf_counter()
    last = fit(net, optimizer, loss_fn, stream, loop, d, log, ckpt, start, eval_fn=eval_fn,
               grad_scaler_state=scaler_state, stop=getattr(args, "stop", None))
    seconds = time.perf_counter() - t0
    log.close({"train_seconds": round(seconds, 3), **last})
    return net, {"steps": steps, "warmup_steps": warmup, "train_seconds": round(seconds, 3),
                 "resumed_from_step": start, "global_batch": global_batch, **{f"last_{k}": v for k, v in last.items()}}


def run_main(args, body: Callable) -> int:
    """`body(args)` as a training command (see `run_command`), with `args.stop` the SIGTERM flag."""

    def with_stop(stop: StopFlag) -> int:
        args.stop = stop
        return body(args)

    return run_command(with_stop, args.output_dir)
