"""The seed's defaults and recipes as pure arithmetic: flags in, `Settings` out.

Pretraining recipe (the seed's bert_pretraining_bookswiki_main.py and bert_pretraining_overfit_main.py):
- bookswiki reaches NVIDIA's global batch, 65536 sequences in phase 1 and 32768 in phase 2, by
  gradient accumulation: accumulation = global batch // (workers x batch per worker), at least 1.
  --fast_perf_only=1 aims at 1600 and 200 instead; --no_steps_accumulation=1 uses no accumulation
  (global batch = workers x batch). Phase 2's step count is the seed's: iters2 x (phase-1 sequences
  per worker and step) / (phase-2 sequences per worker and step), so the default 782 becomes 1564
  steps of 32768 (NVIDIA's recipe); --fast_perf_only=1 takes iters2 as it is.
- The peak learning rate is NVIDIA's LAMB recipe scaled linearly with the global batch aimed at:
  6e-3 x global/65536 in phase 1 and 4e-3 x global/32768 in phase 2 (without accumulation, the
  global batch the run gets). The seed computes the same numbers in
  two halves: it passes 7.5e-4 x (8/workers) x global/65536 (and 5e-4 x ... / 32768) to
  run_pretraining.py, which multiplies by the number of workers (so 7.5e-4 and 5e-4 in its 8-card
  examples). bertkit pretrain takes the effective peak rate, so the launcher passes the product.
- overfit uses 6e-3 x global/65536 too (the seed's base rate; the seed also multiplies by the
  number of workers a second time, which this launcher does not copy).
- An explicit --learning_rate overrides these for every phase. Its default, 2e-5, is the
  fine-tuning rate (MRPC and SQuAD), as the seed's help says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bertkit import BertkitError

PRETRAINING_SETS = ("bookswiki", "overfit")
FINETUNING_SETS = ("mrpc", "squad")

# The seed's defaults (demo_bert.py --help; its bert_*_main.py files).
BATCH = {("mrpc", "bf16"): 64, ("mrpc", "fp32"): 32, ("squad", "bf16"): 24, ("squad", "fp32"): 10,
         ("bookswiki", "bf16"): (64, 8), ("bookswiki", "fp32"): (32, 8),
         ("overfit", "bf16"): 32, ("overfit", "fp32"): 32}
SEQ = {"mrpc": 128, "squad": 384, "bookswiki": (128, 512), "overfit": 128}
EPOCHS = {"mrpc": 3.0, "squad": 2.0, "bookswiki": 40.0, "overfit": 1.0}
ITERS = {"bookswiki": (7038, 782), "overfit": 200}
WARMUP = {"bookswiki": (2000, 200), "overfit": 10}
GLOBAL_BATCH = (65536, 32768)  # NVIDIA's LAMB recipe for BERT-large (bookswiki phases 1 and 2)
FAST_PERF_GLOBAL_BATCH = (1600, 200)  # the seed's --fast_perf_only=1
PEAK_LR = (6e-3, 4e-3)  # NVIDIA's LAMB peak rates at GLOBAL_BATCH
FINETUNE_LR = 2e-5
SAVE_CKPT_STEPS = 100
SQUAD_DOC_STRIDE = 128  # the seed's bert_squad_main.py
OUTPUT_DIR = "/tmp/bert"  # the seed's default
DATASET_PATH = "./dataset/"  # the seed's default
CORPUS_DIRS = ("books_wiki_en_corpus", "wikicorpus_en")  # the seed's layout, then bertkit's wiki_only



@dataclass(frozen=True)
class Phase:
    """One `bertkit pretrain` run."""

    name: str  # phase_1, phase_2 or overfit
    max_seq_length: int
    max_predictions_per_seq: int
    batch_size: int  # per worker and micro-step
    accumulation: int
    steps: int
    warmup: int
    learning_rate: float  # peak, effective (no further scaling)
    world_size: int

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.accumulation * self.world_size


@dataclass(frozen=True)
class Finetune:
    """One `bertkit finetune` run."""

    task: str  # mrpc or squad
    batch_size: int  # per worker
    max_seq_length: int
    epochs: float
    learning_rate: float
    world_size: int


@dataclass(frozen=True)
class Settings:
    command: str
    test_set: str
    data_type: str
    model_variant: str
    world_size: int
    phases: tuple[Phase, ...] = ()
    finetune: Finetune | None = None
    notes: tuple[str, ...] = ()  # what the user should know about how flags were taken


def values(text: str | None, name: str, most: int, cast=int) -> tuple | None:
    """`a` or `a,b` from a flag, as a tuple of 1..most positive numbers; None when not given."""
    if text is None:
        return None
    parts = [t.strip() for t in str(text).split(",")]
    try:
        out = tuple(cast(t) for t in parts)
    except ValueError:
        out = ()
    if not 1 <= len(out) <= most or any(v <= 0 for v in out):
        shape = "N" if most == 1 else "N or N,M"
        raise BertkitError(f"--{name}: expected {shape} (positive numbers), got {text!r}")
    return out


def predictions_for(seq: int) -> int:
    """Masked positions per sequence: 20 at 128 and 80 at 512 (the seed's data), else 15% of it."""
    return {128: 20, 512: 80}.get(seq, max(1, math.floor(0.15 * seq)))


def accumulation(global_batch: int, world: int, batch: int) -> int:
    """The seed's int(global / workers / batch), at least 1."""
    return max(1, global_batch // (world * batch))


def pretraining_phases(test_set: str, data_type: str, world: int, batch=None, seq=None, iters=None,
                       warmup=None, learning_rate: float | None = None, fast_perf_only: bool = False,
                       no_steps_accumulation: bool = False, global_batch=None) -> tuple[list[Phase], list[str]]:
    """The phases of a pretraining run and notes on how the flags were taken. `batch`, `seq`,
    `iters`, `warmup`, `global_batch` are tuples from `values` (or None for the seed's defaults)."""
    notes = []
    if test_set == "overfit":
        for name, v in (("batch_size", batch), ("max_seq_length", seq), ("iters", iters), ("warmup", warmup),
                        ("global_batch_size", global_batch)):
            if v is not None and len(v) > 1:
                raise BertkitError(f"--{name}: overfit has one phase; give one value, got {','.join(map(str, v))}")
        if fast_perf_only or no_steps_accumulation:
            notes.append("--fast_perf_only and --no_steps_accumulation apply to bookswiki only")
        b = batch[0] if batch else BATCH[("overfit", data_type)]
        s = seq[0] if seq else SEQ["overfit"]
        acc = accumulation(global_batch[0], world, b) if global_batch else 1
        target = global_batch[0] if global_batch else b * world
        lr = learning_rate or PEAK_LR[0] * target / GLOBAL_BATCH[0]
        return [Phase("overfit", s, predictions_for(s), b, acc, iters[0] if iters else ITERS["overfit"],
                      warmup[0] if warmup else WARMUP["overfit"], lr, world)], notes

    def pair(given, default, second_default=None):
        if given is None:
            return default
        return (given[0], given[1] if len(given) > 1 else (second_default or default)[1])

    b1, b2 = pair(batch, BATCH[("bookswiki", data_type)])
    s1, s2 = pair(seq, SEQ["bookswiki"])
    i1, i2 = pair(iters, ITERS["bookswiki"])
    w1, w2 = pair(warmup, WARMUP["bookswiki"])
    if no_steps_accumulation:
        acc1 = acc2 = 1
        target = (b1 * world, b2 * world)
        if fast_perf_only or global_batch:
            notes.append("--no_steps_accumulation=1: no accumulation, so --fast_perf_only and "
                         "--global_batch_size do not apply")
    else:
        target = pair(global_batch, FAST_PERF_GLOBAL_BATCH if fast_perf_only else GLOBAL_BATCH)
        acc1, acc2 = accumulation(target[0], world, b1), accumulation(target[1], world, b2)
        for t, a, b in ((target[0], acc1, b1), (target[1], acc2, b2)):
            if a * b * world != t:
                notes.append(f"global batch {t} is not workers ({world}) x batch ({b}) x a whole accumulation; "
                             f"using {a} accumulation steps: global batch {a * b * world}")
    if not fast_perf_only:
        i2 = int(i2 * (b1 * acc1) / (b2 * acc2))  # the seed's "adjust for batch size"
    # The seed scales the rate with the global batch it aims at (which a batch that does not divide
    # it misses by a little); without accumulation, with the one it gets.
    lr1 = learning_rate or PEAK_LR[0] * target[0] / GLOBAL_BATCH[0]
    lr2 = learning_rate or PEAK_LR[1] * target[1] / GLOBAL_BATCH[1]
    return [Phase("phase_1", s1, predictions_for(s1), b1, acc1, i1, w1, lr1, world),
            Phase("phase_2", s2, predictions_for(s2), b2, acc2, i2, w2, lr2, world)], notes


def finetuning_settings(test_set: str, data_type: str, world: int, batch=None, seq=None,
                        epochs: float | None = None, learning_rate: float | None = None) -> Finetune:
    for name, v in (("batch_size", batch), ("max_seq_length", seq)):
        if v is not None and len(v) > 1:
            raise BertkitError(f"--{name}: fine-tuning takes one value, got {','.join(map(str, v))}")
    return Finetune(test_set, batch[0] if batch else BATCH[(test_set, data_type)],
                    seq[0] if seq else SEQ[test_set], epochs or EPOCHS[test_set],
                    learning_rate or FINETUNE_LR, world)


def settings(args, world: int) -> Settings:
    """The resolved settings of a seed command line for `world` workers in all."""
    command, test_set = args.command, args.test_set
    if test_set is None:
        if command == "finetuning":
            raise BertkitError("-c finetuning needs -t mrpc or -t squad")
        test_set = "bookswiki"
    if command == "pretraining" and test_set not in PRETRAINING_SETS:
        raise BertkitError(f"-t {test_set} is a fine-tuning set; pretraining takes {' or '.join(PRETRAINING_SETS)}")
    if command == "finetuning" and test_set not in FINETUNING_SETS:
        raise BertkitError(f"-t {test_set} is a pretraining set; finetuning takes {' or '.join(FINETUNING_SETS)}")
    for name in ("data_type", "model_variant"):
        if getattr(args, name) is None:
            raise BertkitError(f"-c {command} needs --{name} (-{name[0]})")
    batch = values(args.batch_size, "batch_size", 2)
    seq = values(args.max_seq_length, "max_seq_length", 2)
    notes = []
    if command == "pretraining":
        phases, notes = pretraining_phases(
            test_set, args.data_type, world, batch, seq, values(args.iters, "iters", 2),
            values(args.warmup, "warmup", 2), args.learning_rate, bool(args.fast_perf_only),
            bool(args.no_steps_accumulation), values(args.global_batch_size, "global_batch_size", 2))
        if args.epochs is not None:
            notes.append("-e/--epochs has no effect on pretraining, which runs for --iters steps")
        return Settings(command, test_set, args.data_type, args.model_variant, world, tuple(phases),
                        notes=tuple(notes))
    for name in ("iters", "warmup", "global_batch_size"):
        if getattr(args, name) is not None:
            notes.append(f"--{name} applies to pretraining only")
    if args.fast_perf_only or args.no_steps_accumulation:
        notes.append("--fast_perf_only and --no_steps_accumulation apply to bookswiki pretraining only")
    ft = finetuning_settings(test_set, args.data_type, world, batch, seq, args.epochs, args.learning_rate)
    return Settings(command, test_set, args.data_type, args.model_variant, world, finetune=ft, notes=tuple(notes))


def describe(p: Phase) -> str:
    return (f"{p.steps} steps ({p.warmup} warmup), global batch {p.global_batch} = {p.batch_size} x "
            f"{p.accumulation} accumulation x {p.world_size} worker(s), seq {p.max_seq_length} "
            f"({p.max_predictions_per_seq} predictions), peak lr {p.learning_rate:.4g}")
