"""`bertkit finetune mrpc|squad`: what the fine-tuning tasks share, and the dispatch to them.

A task module (mrpc.py, squad.py) parses its flags, reads its data, and calls the functions here:
`setup` (model shape, weights, vocabulary, processes), `train` (AdamW, warmup then linear decay,
gradient clipping, the one training loop) and `infer` (evaluation batches spread over the ranks and
gathered, so scores do not depend on the number of processes). Under torchrun:

    torchrun --nproc_per_node 8 -m bertkit finetune mrpc --data_dir glue/MRPC \\
        --init_checkpoint uncased_L-12_H-768_A-12 --output_dir out/mrpc --do_eval
"""

from __future__ import annotations

import importlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from bertkit import BertkitError
from bertkit.cli import flag, parse_bool
from bertkit.config import VARIANTS, BertConfig, resolve
from bertkit.distributed import Dist, all_gather_objects, init, parallelize, shutdown
from bertkit.tasks.common import BUNDLED_VOCAB, add_run_flags, initial_weights, prepare_output_dir
from bertkit.tokenizer import WordPiece

TASKS = {"mrpc": "bertkit.tasks.mrpc", "squad": "bertkit.tasks.squad"}


@dataclass(frozen=True)
class Recipe:
    """The optimisation settings a run takes when their flags are not given."""
    learning_rate: float
    num_train_epochs: float
    warmup_proportion: float = 0.1
    layerwise_lr_decay: float = 1.0
    group_by_length: bool = False
    train_batch_size: int = 32  # per process


# Google's run_classifier.py and run_squad.py flag defaults (lr 5e-5, 3 epochs, 10% warmup).
GOOGLE = {"mrpc": Recipe(5e-5, 3.0), "squad": Recipe(5e-5, 3.0)}
# Small encoders (MiniLM-sized): measured with benchmarks/finetune_mrpc.py, see benchmarks/README.md.
SMALL = {"mrpc": Recipe(2e-4, 5.0, layerwise_lr_decay=0.8, group_by_length=True, train_batch_size=16),
         "squad": Recipe(1e-4, 2.0, group_by_length=True)}
SMALL_MODEL_PARAMS = 30_000_000  # encoder parameters (embeddings excluded) below which SMALL applies


def encoder_params(config: BertConfig) -> int:
    """Parameters of the Transformer layers alone (what sets a model's capacity, not its vocabulary)."""
    H, I = config.hidden_size, config.intermediate_size
    return config.num_hidden_layers * (4 * H * H + 2 * H * I + 9 * H + I)


# ---- dispatch -----------------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    task, rest = split_task(argv)
    if task is None:
        print(USAGE)
        return 0 if argv else 2
    return importlib.import_module(TASKS[task]).main(rest)


USAGE = """usage: bertkit finetune {mrpc,squad} [flags]

  mrpc   paraphrase classification on GLUE's MRPC (the seed's run_classifier.py flags)
  squad  span question answering on SQuAD v1.1 / v2.0 (the seed's run_squad.py flags)

`--task_name=MRPC` may stand in for the task word. Run `bertkit finetune mrpc --help` for a task's flags."""


def split_task(argv: list[str]) -> tuple[str | None, list[str]]:
    """The task (from the first word, or --task_name) and the remaining flags."""
    named = None
    for i, a in enumerate(argv):
        for prefix in ("--task_name", "--task-name"):
            if a == prefix and i + 1 < len(argv):
                named = argv[i + 1]
            elif a.startswith(prefix + "="):
                named = a.split("=", 1)[1]
    word = argv[0] if argv and not argv[0].startswith("-") else None
    if word is None and named is None:
        if not argv or argv[0] in ("-h", "--help"):
            return None, []
        raise BertkitError("name the task: `bertkit finetune mrpc ...`, `bertkit finetune squad ...` "
                           "or --task_name=MRPC")
    for name in (word, named):
        if name is not None and name.lower() not in TASKS:
            raise BertkitError(f"task {name!r}: bertkit fine-tunes {' and '.join(TASKS)} only")
    if word is not None and named is not None and word.lower() != named.lower():
        raise BertkitError(f"the task word {word!r} and --task_name={named} disagree")
    return (word or named).lower(), argv[1:] if word is not None else argv


# ---- flags --------------------------------------------------------------------------------------

def add_flags(p, task: str, max_seq_length: int) -> None:
    """The flags MRPC and SQuAD share: the seed's names, in snake_case or kebab-case."""
    g = GOOGLE[task]
    flag(p, "task_name", default=task, help="The task (the seed's run_classifier.py flag): MRPC or squad.")
    flag(p, "init_checkpoint", default=None, help=(
        "Start from these weights: a bertkit checkpoint folder, a training output folder (its newest "
        "checkpoint), a Google checkpoint (zip or folder) or a Hugging Face folder. A fine-tuned "
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
        f"Peak AdamW learning rate (default {g.learning_rate:g}; for encoders under "
        f"{SMALL_MODEL_PARAMS // 10**6}M parameters, the small-model recipe)."))
    flag(p, "num_train_epochs", type=float, default=None, help=(
        f"Passes over the training examples (default {g.num_train_epochs:g}, or the small-model recipe); "
        "steps = int(examples / global batch * epochs), as Google computes them."))
    flag(p, "warmup_proportion", type=float, default=None,
         help=f"Share of the steps with linear warmup; linear decay to 0 after (default {g.warmup_proportion:g}).")
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


def check_flags(args) -> None:
    """What the shared flags must satisfy, checked before any work starts."""
    args.precision = args.precision or "fp32"
    for name in ("train_batch_size", "eval_batch_size", "max_seq_length", "save_checkpoints_steps"):
        value = getattr(args, name)  # None: left to the recipe
        if value is not None and value < 1:
            raise BertkitError(f"--{name} must be >= 1, got {value}")
    if args.learning_rate is not None and not args.learning_rate > 0:
        raise BertkitError(f"--learning_rate must be > 0, got {args.learning_rate}")
    if args.num_train_epochs is not None and not args.num_train_epochs > 0:
        raise BertkitError(f"--num_train_epochs must be > 0, got {args.num_train_epochs}")
    if args.warmup_proportion is not None and not 0 <= args.warmup_proportion <= 1:
        raise BertkitError(f"--warmup_proportion must be between 0 and 1, got {args.warmup_proportion}")
    if args.layerwise_lr_decay is not None and not 0 < args.layerwise_lr_decay <= 1:
        raise BertkitError(f"--layerwise_lr_decay must be in (0, 1], got {args.layerwise_lr_decay}")
    if args.weight_decay < 0 or args.max_grad_norm < 0:
        raise BertkitError("--weight_decay and --max_grad_norm must be >= 0")
    if not args.init_checkpoint and not args.bert_config_file:
        raise BertkitError("give --init_checkpoint (pretrained weights) or --bert_config_file")


def say(msg: str) -> None:
    """Print a note on stderr, from the main process only."""
    from bertkit.distributed import env_ranks

    if env_ranks()[0] == 0:
        print(msg, file=sys.stderr, flush=True)


def choose_recipe(args, task: str, config: BertConfig, log=say) -> None:
    """Fill the optimisation flags left unset from the task's recipe for this model size."""
    small = encoder_params(config) < SMALL_MODEL_PARAMS
    recipe = (SMALL if small else GOOGLE)[task]
    unset = [k for k in ("learning_rate", "num_train_epochs", "warmup_proportion", "layerwise_lr_decay",
                         "group_by_length", "train_batch_size") if getattr(args, k) is None]
    for k in unset:
        setattr(args, k, getattr(recipe, k))
    if unset and args.do_train:
        log(f"recipe ({'small-model' if small else 'Google'} defaults for {task}): "
            + ", ".join(f"{k} {getattr(args, k)}" for k in unset))


# ---- model and processes ------------------------------------------------------------------------

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
    vocab_file = Path(args.vocab_file) if args.vocab_file else (init_vocab or BUNDLED_VOCAB)
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
    d = init(args.device)
    return Setup(d, config, state, vocab_file, lowercase, tokenizer)


def build(model: nn.Module, s: Setup, args, log=say) -> nn.Module:
    """Load the initial weights into `model` (a task head over the encoder); report fresh heads."""
    from bertkit.checkpoint import load_weights

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


# ---- training -----------------------------------------------------------------------------------

def train_steps(num_examples: int, global_batch: int, epochs: float) -> int:
    """Google's count: int(num_examples / global batch * epochs)."""
    return int(num_examples / global_batch * epochs)


def length_grouped_order(lengths: np.ndarray, chunk: int, seed: int, epoch: int,
                         group_chunks: int = 50) -> np.ndarray:
    """Epoch `epoch`'s order of the samples for `Stream`, with each run of `chunk` samples (one
    optimizer step's batch, all ranks together) of similar lengths.

    The samples are shuffled, cut into groups of `chunk * group_chunks`, each group sorted by length
    and cut into chunks, and the chunks shuffled. Epochs follow each other without a break, so a
    step's batch starts at a multiple of `chunk` counted from the first epoch: the first
    `(-epoch * n) % chunk` samples of this epoch finish the last batch of the one before, and the
    short chunk goes last. Depends only on (seed, epoch)."""
    n = len(lengths)
    rng = np.random.default_rng([seed, epoch, 7])
    perm = rng.permutation(n)
    head = min((-epoch * n) % chunk, n)
    rest = perm[head:]
    chunks = []
    group = chunk * group_chunks
    for g in range(0, len(rest), group):
        part = rest[g:g + group]
        part = part[np.argsort(lengths[part], kind="stable")]
        chunks += [part[i:i + chunk] for i in range(0, len(part), chunk)]
    tail = [c for c in chunks if len(c) < chunk]  # at most one: only the last group can be short
    full = [c for c in chunks if len(c) == chunk]
    full = [full[i] for i in rng.permutation(len(full))]
    return np.concatenate([perm[:head], *full, *tail]).astype(np.int64)


class LayerwiseAdamW(torch.optim.AdamW):
    """AdamW whose parameter groups each carry an `lr_scale`: the training loop sets one learning
    rate on every group, and each group steps with that rate times its scale."""

    @torch.no_grad()
    def step(self, closure=None):
        rates = [g["lr"] for g in self.param_groups]
        for g in self.param_groups:
            g["lr"] = g["lr"] * g["lr_scale"]
        try:
            return super().step(closure)
        finally:
            for g, lr in zip(self.param_groups, rates):
                g["lr"] = lr


def make_finetune_optimizer(model: nn.Module, lr: float, weight_decay: float,
                            layerwise_lr_decay: float = 1.0) -> torch.optim.Optimizer:
    """AdamW (eps 1e-6, no weight decay for biases and LayerNorm). With `layerwise_lr_decay` < 1,
    layer k of L (embeddings 0, heads L + 1) learns at decay ** (L + 1 - k) of the peak rate."""
    from bertkit.optim import make_optimizer, param_groups

    if layerwise_lr_decay >= 1.0:
        return make_optimizer("adamw", model, lr=lr, weight_decay=weight_decay, eps=1e-6)
    L = model.config.num_hidden_layers

    def depth(name: str) -> int:
        if name.startswith("bert.embeddings."):
            return 0
        if name.startswith("bert.layers."):
            return int(name.split(".")[2]) + 1
        return L + 1  # pooler and task head

    names = {id(p): n for n, p in model.named_parameters()}
    groups = []
    for base in param_groups(model, weight_decay):
        by_depth: dict[int, list] = {}
        for p in base["params"]:
            by_depth.setdefault(depth(names[id(p)]), []).append(p)
        groups += [{"params": ps, "weight_decay": base["weight_decay"],
                    "lr_scale": layerwise_lr_decay ** (L + 1 - k)} for k, ps in sorted(by_depth.items())]
    fused = True if {p.device.type for p in model.parameters()} <= {"cpu", "cuda"} else None
    return LayerwiseAdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=weight_decay, fused=fused)


def train(model: nn.Module, features: Sequence, collate: Callable, loss_fn: Callable, num_examples: int,
          args, s: Setup, run: dict, eval_fn: Callable | None = None, eval_every: int = 0
          ) -> tuple[nn.Module, dict]:
    """Fine-tune `model` on `features` (a list the collate function batches) with the one training
    loop; the checkpoint at the end goes to --output_dir. With `eval_fn`, the model is also scored
    every `eval_every` steps (into the log). Returns the model (wrapped for the processes) and a
    summary: steps, seconds spent training, the last logged record."""
    from bertkit.checkpoint import load_training, load_weights
    from bertkit.optim import WarmupPolyDecay
    from bertkit.stream import Stream
    from bertkit.tasks.common import fp32_patterns
    from bertkit.train import Checkpointer, LoopConfig, RunLog, fit

    d = s.d
    out = Path(args.output_dir)
    global_batch = args.train_batch_size * d.world_size
    steps = train_steps(num_examples, global_batch, args.num_train_epochs)
    if steps < 1:
        raise BertkitError(f"{num_examples} training examples at a global batch of {global_batch} for "
                           f"{args.num_train_epochs:g} epochs make no training step")
    warmup = int(steps * args.warmup_proportion)
    log = RunLog(Path(args.dllog_path) if args.dllog_path else out / "log.jsonl", d.is_main, total=steps,
                 tensorboard_dir=out / "tensorboard", desc=f"finetune {run['task']}")
    resume_from = prepare_output_dir(out, run, args.resume, args.overwrite, d.is_main, log=log.print)
    start, scaler_state, opt_state = 0, None, None
    if resume_from is not None:
        _, state, opt_state, trainer = load_training(resume_from)
        load_weights(model, state, str(resume_from))
        start, scaler_state = trainer["step"], trainer.get("grad_scaler")
        log.print(f"resumed from {resume_from} at step {start}")
        log.advance(start)
    model.to(d.device)
    optimizer = make_finetune_optimizer(model, args.learning_rate, args.weight_decay, args.layerwise_lr_decay)
    if opt_state is not None:
        optimizer.load_state_dict(opt_state)
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
                      save_every=args.save_checkpoints_steps, log_every=args.log_every, seed=args.seed,
                      eval_every=eval_every, skip_nonfinite=args.skip_nonfinite,
                      fp32_modules=fp32_patterns(args.bf16_config_path, args.precision))
    ckpt = Checkpointer(out, s.config, s.vocab_file, s.lowercase, args.keep_checkpoints, run)
    log.print(f"fine-tuning {s.config.num_hidden_layers}L/{s.config.hidden_size}H on {num_examples} examples "
              f"({len(features)} sequences), {steps} steps ({warmup} warmup) of global batch {global_batch} "
              f"= {args.train_batch_size} x {d.world_size} process(es); lr {args.learning_rate:g}, "
              f"{d.device.type}, {args.precision}")
    t0 = time.perf_counter()
    last = fit(net, optimizer, loss_fn, stream, loop, d, log, ckpt, start, eval_fn=eval_fn,
               grad_scaler_state=scaler_state, stop=getattr(args, "stop", None))
    seconds = time.perf_counter() - t0
    log.close()
    return net, {"steps": steps, "warmup_steps": warmup, "train_seconds": round(seconds, 3),
                 "resumed_from_step": start, "global_batch": global_batch, **{f"last_{k}": v for k, v in last.items()}}


# ---- evaluation ---------------------------------------------------------------------------------

def infer(model: nn.Module, features: Sequence, collate: Callable,
          forward: Callable[[nn.Module, dict], list], batch_size: int, d: Dist, precision: str) -> list:
    """`forward(model, batch)` (one output per sequence) over every feature, in feature order, on
    all ranks together. The batches are fixed before they are dealt to the ranks (sequences sorted
    by length, then cut), so each sequence meets the same batch whatever the number of processes,
    and the outputs are identical bit for bit."""
    from bertkit.stream import to_device
    from bertkit.train import autocast

    net = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    order = sorted(range(len(features)), key=lambda i: len(features[i].input_ids))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    mine = {}
    net.eval()
    with torch.no_grad(), autocast(precision, d.device):
        for b in batches[d.rank::d.world_size]:
            batch = to_device(collate([features[i] for i in b]), d.device)
            mine.update(zip(b, forward(net, batch)))
    merged: dict = {}
    for part in all_gather_objects(mine):
        merged.update(part)
    return [merged[i] for i in range(len(features))]


def write_json(path: Path, obj: dict) -> None:
    import json

    from bertkit.io import write_atomic

    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def run_main(args, body: Callable) -> int:
    """Enter SIGTERM handling, call `body(args)`, leave the process group; a stop by SIGTERM after
    the checkpoint is saved returns 143."""
    from bertkit.train import StopFlag, Stopped

    with StopFlag() as stop:
        args.stop = stop
        try:
            return body(args)
        except Stopped as e:
            print(str(e), file=sys.stderr)
            return 143
        finally:
            shutdown()
