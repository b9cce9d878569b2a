"""`bertkit demo` and `demo_bert`: the seed's demo_bert.py command line, on PyTorch's own launcher.

With no -c/--command it runs the demo (bundled corpus -> tiny BERT -> bundled MRPC sample, see
demo.py). With the seed's flags it resolves the seed's defaults and recipes, then runs
`bertkit pretrain` / `bertkit finetune` in this process, under torchrun with one worker per device
(-v N), on every server of MULTI_HLS_IPS over ssh, or, with --kubernetes_run, inside the ranks that
an outside launcher (a PyTorchJob's torchrun, an MPIJob's mpirun) started:

    demo_bert -c pretraining -m large -d bf16 -t bookswiki --dataset_path DATA -v 8
    MULTI_HLS_IPS=10.0.0.1,10.0.0.2 demo_bert -c finetuning -m large -d bf16 -t squad --dataset_path SQUAD -v 8
    mpirun -np 16 ... bertkit demo -c pretraining ... --use_horovod=1 --kubernetes_run=True [--run_phase2=True]

The pure functions here (`settings`, `pretrain_argv`, `finetune_argv`) turn flags into the exact
`bertkit` command lines, so `--dry_run` and the tests see them without running anything.

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

import importlib
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bertkit import BertkitError
from bertkit.cli import COMMANDS, ArgumentParser, flag, parse_bool
from bertkit.config import VARIANTS

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


def prog_name() -> str:
    """`demo_bert` when started by that name (the seed's), else `bertkit demo`."""
    return "demo_bert" if Path(sys.argv[0]).name == "demo_bert" else "bertkit demo"


def parser() -> ArgumentParser:
    p = ArgumentParser(prog=prog_name(), description=(
        "The seed's demo_bert.py: pretraining (bookswiki, overfit) or fine-tuning (mrpc, squad) with the "
        "seed's flags and defaults, on this process, -v N workers of this server (torchrun), the servers "
        "of MULTI_HLS_IPS (torchrun over ssh; DOCKER_SSHD_PORT, MPI_TCP_INCLUDE), or the ranks of an "
        "outside launcher (--kubernetes_run). Without -c: the demo, bundled corpus -> tiny BERT -> MRPC "
        "sample, a few minutes on a laptop."))
    flag(p, "command", "-c", choices=("pretraining", "finetuning"), metavar="<command>",
         help="pretraining or finetuning. Leave out for the demo.")
    flag(p, "data_type", "-d", choices=("fp32", "bf16"), metavar="<data_type>",
         help="fp32 or bf16 (autocast with fp32 master weights).")
    flag(p, "model_variant", "-m", choices=tuple(VARIANTS), metavar="<model_variant>",
         help=f"Model variant: {', '.join(VARIANTS)} (Google's shapes).")
    flag(p, "bert_config_dir", metavar="<bert_config_dir>", help=(
        "Folder with the model's bert_config.json (and, for fine-tuning, its weights and vocab.txt: "
        "Google's unzipped checkpoint or a bertkit one). If not given: the variant's shape for "
        "pretraining; Google's checkpoint of the variant, downloaded, for fine-tuning."))
    flag(p, "model", choices=("bert",), default="bert", help="The model name: bert.")
    flag(p, "output_dir", "-o", metavar="<dir>",
         help=f"Output directory. Default: {OUTPUT_DIR} (./bertkit-demo for the demo).")
    flag(p, "use_horovod", "-v", type=int, metavar="<num_workers_per_server>", help=(
        "Workers per server, one per device (CPU processes without accelerators), started by torchrun. "
        "Under --kubernetes_run the outside launcher decides, and this is 1."))
    flag(p, "test_set", "-t", choices=PRETRAINING_SETS + FINETUNING_SETS, metavar="<test_set>", help=(
        "mrpc or squad for finetuning; bookswiki (default) or overfit for pretraining."))
    flag(p, "epochs", "-e", type=float, metavar="<val>", help=(
        "Fine-tuning epochs: 3 for mrpc, 2 for squad. Pretraining runs for --iters steps: the seed "
        "printed its default 40 for bookswiki but never used it, and so does bertkit (with a note)."))
    flag(p, "max_seq_length", "-s", metavar="<val1[,val2]>",
         help="Tokens per sequence: 128 for mrpc; 384 for squad; 128,512 for bookswiki; 128 for overfit.")
    flag(p, "iters", "-i", metavar="<val1[,val2]>", help=(
        "Steps of each pretraining phase: 7038,782 for bookswiki (phase 2 counted in phase-1 batches, "
        "as the seed does: 782 -> 1564 steps), 200 for overfit."))
    flag(p, "warmup", "-w", metavar="<val1[,val2]>",
         help="Warmup steps of each pretraining phase: 2000,200 for bookswiki, 10 for overfit.")
    flag(p, "fast_perf_only", "-fpo", type=int, choices=(0, 1), default=0, metavar="<0|1>",
         help="1: bookswiki with the smaller global batch 1600,200 for speed measurements.")
    flag(p, "save_ckpt_steps", type=int, metavar="<val>",
         help=f"Checkpoint every N steps (pretraining). Default {SAVE_CKPT_STEPS}.")
    flag(p, "no_steps_accumulation", type=int, choices=(0, 1), default=0, metavar="<0|1>",
         help="1: bookswiki without gradient accumulation (global batch = workers x batch).")
    flag(p, "batch_size", "-b", metavar="<val1[,val2]>", help=(
        "Batch per worker. bf16/fp32: 64/32 for mrpc; 24/10 for squad; 64,8/32,8 for bookswiki; 32 for overfit."))
    flag(p, "learning_rate", type=float, metavar="<lr>", help=(
        f"Peak learning rate. Default {FINETUNE_LR:g} for fine-tuning; pretraining takes NVIDIA's LAMB "
        "recipe scaled with the global batch unless this is given."))
    flag(p, "dataset_path", metavar="<path>", help=(
        f"Data. bookswiki: the folder holding seq_len_128/ and seq_len_512/ (the seed's or `bertkit data "
        f"prepare`'s layout); mrpc: GLUE's MRPC folder (fetched when empty); squad: the folder with "
        f"train-v1.1.json and dev-v1.1.json; overfit: where the bundled corpus's dataset is made. "
        f"Default {DATASET_PATH} (overfit: OUTPUT_DIR/dataset)."))
    flag(p, "init_checkpoint_path", metavar="<path>", help=(
        "Initial weights for overfit (and bookswiki phase 1): a checkpoint, or a folder holding one per "
        "variant (PATH/<variant>/, the seed's layout). Without it, random weights."))
    flag(p, "checkpoint_folder", metavar="<path>",
         help="Pretrained model to fine-tune: bertkit, Google (folder or zip) or Hugging Face.")
    flag(p, "bf16_config_path", metavar="<json>",
         help="Modules kept in fp32 under bf16 (bertkit's format, see `bertkit pretrain --help`).")
    flag(p, "kubernetes_run", type=parse_bool, default=False, metavar="<bool>", help=(
        "True: started by an outside launcher (PyTorchJob torchrun, MPIJob mpirun): take rank and world "
        "from the environment and start nothing. Several workers run one pretraining phase per invocation."))
    flag(p, "run_phase2", type=parse_bool, default=False, metavar="<bool>", help=(
        "True: run pretraining phase 2 only, from phase 1's last checkpoint in --output_dir (which must "
        "be there), with the same flags as phase 1."))
    flag(p, "enable_scoped_allocator", type=parse_bool, default=False, metavar="<bool>", help=(
        "A TensorFlow graph optimisation: no effect here (PyTorch DDP always fuses gradients into "
        "buckets); a note says so."))
    flag(p, "horovod_hierarchical_allreduce", type=parse_bool, default=False, metavar="<bool>", help=(
        "A Horovod option: no effect here (NCCL picks its own algorithms across servers; gloo has none); "
        "a note says so."))
    # bertkit's own
    flag(p, "global_batch_size", metavar="<val1[,val2]>", help=(
        "Global batch per phase (the seed's later versions): 65536,32768 for bookswiki; for overfit the "
        "default is workers x batch (no accumulation)."))
    flag(p, "dist_timeout", type=float, metavar="<seconds>", help=(
        "How long workers wait for each other (process-group timeout, rendezvous): a lost server or a "
        "cut link ends the run with an error after this long. Default: $BERTKIT_DIST_TIMEOUT, else 600."))
    flag(p, "device", default="auto", help="auto (a GPU per worker if any, else CPU), cpu, cuda.")
    flag(p, "seed", type=int, default=12345, help="Base seed of every run.")
    flag(p, "overwrite", type=parse_bool, default=False,
         help="Replace checkpoints of another run found in the output folders instead of stopping.")
    flag(p, "quick", type=parse_bool, default=False,
         help="Demo only: a shorter demo (about a minute), the same steps.")
    flag(p, "dry_run", type=parse_bool, default=False,
         help="Print the settings and the commands, run nothing.")
    return p


# ---- settings -----------------------------------------------------------------------------------

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


# ---- bertkit command lines ----------------------------------------------------------------------

def _num(x: float) -> str:
    return f"{x:.10g}"


def pretrain_argv(phase: Phase, input_files_dir: str, output_dir: str, bert_config: str, data_type: str,
                  save_steps: int, seed: int, device: str = "auto", init_checkpoint: str | None = None,
                  eval_files_dir: str | None = None, bf16_config_path: str | None = None,
                  overwrite: bool = False) -> list[str]:
    """`bertkit pretrain ...` for one phase (the seed's run_pretraining.py flags)."""
    argv = ["pretrain", "--input_files_dir", input_files_dir, "--output_dir", output_dir,
            "--bert_config_file", bert_config, "--train_batch_size", str(phase.batch_size),
            "--max_seq_length", str(phase.max_seq_length),
            "--max_predictions_per_seq", str(phase.max_predictions_per_seq),
            "--num_train_steps", str(phase.steps), "--num_accumulation_steps", str(phase.accumulation),
            "--num_warmup_steps", str(phase.warmup), "--learning_rate", _num(phase.learning_rate),
            "--save_checkpoints_steps", str(save_steps), "--allreduce_post_accumulation", "true",
            "--precision", data_type, "--seed", str(seed), "--device", device]
    if init_checkpoint:
        argv += ["--init_checkpoint", init_checkpoint]
    if eval_files_dir:
        argv += ["--do_eval", "true", "--eval_files_dir", eval_files_dir]
    if bf16_config_path:
        argv += ["--bf16_config_path", bf16_config_path]
    if overwrite:
        argv += ["--overwrite", "true"]
    return argv


def finetune_argv(ft: Finetune, data: dict[str, str], model: str, output_dir: str, data_type: str, seed: int,
                  device: str = "auto", bf16_config_path: str | None = None, overwrite: bool = False,
                  extra: list[str] | None = None) -> list[str]:
    """`bertkit finetune mrpc|squad ...` (the seed's run_classifier.py / run_squad.py flags).
    `data`: {"data_dir": ...} for mrpc, {"train_file": ..., "predict_file": ...} for squad."""
    if ft.task == "mrpc":
        argv = ["finetune", "mrpc", "--task_name", "MRPC", "--do_train", "true", "--do_eval", "true",
                "--data_dir", data["data_dir"]]
    else:
        argv = ["finetune", "squad", "--do_train", "true", "--train_file", data["train_file"],
                "--do_predict", "true", "--predict_file", data["predict_file"],
                "--doc_stride", str(SQUAD_DOC_STRIDE)]
    argv += ["--init_checkpoint", model, "--max_seq_length", str(ft.max_seq_length),
             "--train_batch_size", str(ft.batch_size), "--learning_rate", _num(ft.learning_rate),
             "--num_train_epochs", _num(ft.epochs), "--output_dir", output_dir,
             "--precision", data_type, "--seed", str(seed), "--device", device]
    if bf16_config_path:
        argv += ["--bf16_config_path", bf16_config_path]
    if overwrite:
        argv += ["--overwrite", "true"]
    return argv + list(extra or [])


# ---- where things are ---------------------------------------------------------------------------

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
    from bertkit.checkpoint import checkpoint_dir

    return checkpoint_dir(Path(output_dir) / "phase_1", phase1.steps)


def check_phase1_done(output_dir: str | os.PathLike, phase1: Phase) -> Path:
    """Phase 1's last checkpoint, verified; a BertkitError (exit 2) when it is not there."""
    from bertkit.checkpoint import verify_folder

    ckpt = phase1_last_checkpoint(output_dir, phase1)
    if not ckpt.is_dir():
        raise BertkitError(f"--run_phase2: phase 1's last checkpoint {ckpt} is not there; run phase 1 first "
                           f"(the same command without --run_phase2, with the same --output_dir)")
    verify_folder(ckpt)
    return ckpt


def init_checkpoint(path: str | None, variant: str) -> str | None:
    """--init_checkpoint_path as the seed lays it out (PATH/<variant>/...) or a checkpoint itself."""
    if not path:
        return None
    p = Path(path)
    if not p.exists():
        raise BertkitError(f"--init_checkpoint_path {path}: no such file or folder")
    return str((p / variant) if (p / variant).is_dir() else p)


def model_cache() -> Path:
    return Path(os.environ.get("BERTKIT_CACHE", Path.home() / ".cache" / "bertkit")) / "models"


def pretrained_model(args) -> str:
    """The model to fine-tune: --checkpoint_folder, --bert_config_dir, else Google's checkpoint of
    the variant, downloaded once into $BERTKIT_CACHE/models (default ~/.cache/bertkit/models)."""
    for name in ("checkpoint_folder", "bert_config_dir"):
        path = getattr(args, name)
        if path:
            if not Path(path).exists():
                raise BertkitError(f"--{name} {path}: no such file or folder")
            return str(Path(path).resolve())
    from bertkit.checkpoint import is_model_folder
    from bertkit.download import download_model, model_name

    folder = model_cache() / model_name(args.model_variant)
    if is_model_folder(folder):
        return str(folder)
    say(f"downloading Google's {model_name(args.model_variant)} to {folder} (once)")
    try:
        download_model(args.model_variant, folder, overwrite=True)
    except BertkitError as e:
        raise BertkitError(f"{e}. To fine-tune without a download, give --checkpoint_folder (a bertkit, "
                           "Google or Hugging Face checkpoint)") from None
    return str(folder)


# ---- how workers start --------------------------------------------------------------------------

@dataclass
class Topology:
    """Who runs the workers: `here` (this process), `inside` (ranks an outside launcher started),
    `torchrun` (N workers on this server) or `hosts` (N workers on each server of MULTI_HLS_IPS)."""

    mode: str
    workers_per_host: int = 1
    hosts: list[str] = field(default_factory=list)
    rank: int = 0
    world_size: int = 1


def topology(args, env: dict | None = None) -> Topology:
    from bertkit.distributed import env_ranks
    from bertkit.launch import hosts_from_env

    env = os.environ if env is None else env
    rank, world, _, launcher = env_ranks(env)
    n = args.use_horovod
    if n is not None and n < 1:
        raise BertkitError(f"-v/--use_horovod must be >= 1, got {n}")
    if args.kubernetes_run or world > 1:
        if not args.kubernetes_run:
            say(f"started by {launcher} with {world} processes: taking ranks from it (as --kubernetes_run=True)")
        if n is not None and n > 1:
            say(f"-v {n}: ignored under an outside launcher, which started {world} worker(s); use -v 1")
        return Topology("inside", 1, [], rank, world)
    hosts = hosts_from_env(env)
    if hosts:
        return Topology("hosts", n or 1, hosts, 0, (n or 1) * len(hosts))
    if n and n > 1:
        check_devices(n, args.device)
        return Topology("torchrun", n, [], 0, n)
    return Topology("here")


def check_devices(workers: int, device: str) -> None:
    """One worker per GPU: -v N may not ask for more GPUs than this server has."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available() and workers > torch.cuda.device_count():
        raise BertkitError(f"-v {workers}: this server has {torch.cuda.device_count()} GPU(s), one worker each "
                           "(or pass --device cpu for CPU workers)")


@dataclass
class Step:
    """One bertkit command of a plan."""

    title: str
    argv: list[str]  # after `bertkit`
    before: Callable[[], object] | None = None  # a check run just before this step (phase 1 finished)


def timeout_of(args) -> float:
    """--dist_timeout, else $BERTKIT_DIST_TIMEOUT, else 600 seconds."""
    from bertkit.distributed import dist_timeout

    return args.dist_timeout if args.dist_timeout is not None else dist_timeout()


def say(msg: str) -> None:
    print(f"{prog_name()}: {msg}", file=sys.stderr, flush=True)


def worker_env(args, topo: Topology) -> dict[str, str]:
    """Environment for the workers: the process-group timeout, threads per CPU worker, interfaces."""
    from bertkit.launch import socket_ifname

    env = {"BERTKIT_DIST_TIMEOUT": _num(timeout_of(args))}
    if topo.mode in ("torchrun", "hosts") and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // topo.workers_per_host))
    if topo.mode == "hosts":
        ifname = socket_ifname()
        if ifname:
            env["GLOO_SOCKET_IFNAME"] = env["NCCL_SOCKET_IFNAME"] = ifname
    return env


def commands(step: Step, topo: Topology, args, shell=None) -> list[tuple[str, list[str]]]:
    """(host, argv) that run a step: one per server in `hosts` mode, else one for this server."""
    from bertkit import launch

    if topo.mode in ("here", "inside"):
        return [("local", [sys.executable, "-m", "bertkit", *step.argv])]
    if topo.mode == "torchrun":
        return [("local", launch.torchrun_argv(step.argv, topo.workers_per_host, timeout_s=timeout_of(args)))]
    shell = shell or launch.ssh_shell(int(os.environ.get("DOCKER_SSHD_PORT", launch.DEFAULT_SSH_PORT)))
    port = int(os.environ.get("MASTER_PORT", launch.DEFAULT_MASTER_PORT))
    env = {**launch.forwarded_env(), **worker_env(args, topo)}
    out = []
    for i, host in enumerate(topo.hosts):
        argv = launch.torchrun_argv(step.argv, topo.workers_per_host, len(topo.hosts), i, topo.hosts[0], port,
                                    timeout_of(args))
        out.append((host, shell(host, launch.remote_command(argv, env, os.getcwd()))))
    return out


def execute(steps: list[Step], topo: Topology, args, shell=None) -> int:
    """Run the steps in order; the first that fails ends the run with its exit status."""
    from bertkit import launch

    env = worker_env(args, topo)
    talk = say if topo.rank == 0 else (lambda msg: None)
    for n, step in enumerate(steps, 1):
        talk(f"[{n}/{len(steps)}] {step.title}")
        if step.before is not None:
            step.before()
        started = time.monotonic()
        if topo.mode in ("here", "inside"):
            os.environ.update(env)
            module = importlib.import_module(COMMANDS[step.argv[0]][0])
            rc = module.main(step.argv[1:]) or 0
        elif topo.mode == "torchrun":
            rc = launch.run_local(commands(step, topo, args)[0][1], env)
        else:
            try:
                launch.run_hosts(commands(step, topo, args, shell), grace_s=timeout_of(args) + 30)
            except BertkitError as e:
                hint = (f" (workers stop waiting for each other after --dist_timeout {timeout_of(args):g} s: "
                        "a server, or the network between the servers, failed)") if "Timed out" in str(e) else ""
                raise BertkitError(f"{step.title}: {e}{hint}") from None
            rc = 0
        if rc != 0:
            say(f"{step.title} failed (exit status {rc})")
            return rc
        talk(f"{step.title}: done in {time.monotonic() - started:.0f} s")
    return 0


def check_hosts(topo: Topology, shell=None) -> None:
    """Before any work: every server of MULTI_HLS_IPS answers, or the launch fails naming those
    that do not (after ssh's ConnectTimeout at most)."""
    from bertkit import launch

    if topo.mode == "hosts":
        shell = shell or launch.ssh_shell(int(os.environ.get("DOCKER_SSHD_PORT", launch.DEFAULT_SSH_PORT)))
        launch.check_reachable(topo.hosts, shell, launch.SSH_CONNECT_TIMEOUT_S + 5)


def show(steps: list[Step], topo: Topology, args, shell=None) -> None:
    for step in steps:
        print(f"# {step.title}")
        for host, argv in commands(step, topo, args, shell):
            print((f"[{host}] " if topo.mode == "hosts" else "") + shlex.join(argv))


# ---- plans --------------------------------------------------------------------------------------

def pretraining_steps(args, s: Settings, topo: Topology) -> list[Step]:
    out = Path(args.output_dir or OUTPUT_DIR).resolve()
    config = args.model_variant
    if args.bert_config_dir:
        config = str(Path(args.bert_config_dir, "bert_config.json").resolve())
    save = args.save_ckpt_steps or SAVE_CKPT_STEPS
    init = init_checkpoint(args.init_checkpoint_path, args.model_variant)
    common = dict(bert_config=config, data_type=s.data_type, save_steps=save, seed=args.seed, device=args.device,
                  bf16_config_path=args.bf16_config_path, overwrite=args.overwrite)
    if s.test_set == "overfit":
        phase = s.phases[0]
        data = overfit_dataset(args, phase, topo, out)
        if init is None and topo.rank == 0:
            say("no --init_checkpoint_path: overfit starts from random weights")
        argv = pretrain_argv(phase, str(data), str(out), init_checkpoint=init, eval_files_dir=str(data), **common)
        return [Step(f"overfit pretraining, {describe(phase)}", argv)]
    p1, p2 = s.phases
    data = [find_phase_data(args.dataset_path or DATASET_PATH, p.max_seq_length)[0].resolve() for p in (p1, p2)]
    ckpt = phase1_last_checkpoint(out, p1)
    step1 = Step(f"pretraining phase 1, {describe(p1)}",
                 pretrain_argv(p1, str(data[0]), str(out / "phase_1"), init_checkpoint=init, **common))
    step2 = Step(f"pretraining phase 2, {describe(p2)}",
                 pretrain_argv(p2, str(data[1]), str(out / "phase_2"), init_checkpoint=str(ckpt), **common),
                 before=lambda: check_phase1_done(out, p1))
    if args.run_phase2:
        return [step2]
    if topo.mode == "inside" and topo.world_size > 1:
        if topo.rank == 0:
            say("several workers under an outside launcher run one phase per invocation: this is phase 1; "
                "run the same command with --run_phase2=True for phase 2")
        return [step1]
    return [step1, step2]


def describe(p: Phase) -> str:
    return (f"{p.steps} steps ({p.warmup} warmup), global batch {p.global_batch} = {p.batch_size} x "
            f"{p.accumulation} accumulation x {p.world_size} worker(s), seq {p.max_seq_length} "
            f"({p.max_predictions_per_seq} predictions), peak lr {p.learning_rate:.4g}")


def overfit_dataset(args, phase: Phase, topo: Topology, out: Path) -> Path:
    """The seed's overfit data, made from bertkit's bundled corpus (once; rank 0 under an outside
    launcher while the others wait for it)."""
    from bertkit.data.bundled import demo_dataset

    folder = Path(args.dataset_path).resolve() if args.dataset_path else out / "dataset"
    if args.dry_run:
        return folder
    return rank0_first(lambda: demo_dataset(folder, phase.max_seq_length, phase.max_predictions_per_seq,
                                            seed=args.seed),
                       lambda: dataset_ready(folder, phase.max_seq_length, phase.max_predictions_per_seq),
                       topo, timeout_of(args), f"the dataset {folder}")


def dataset_ready(folder: Path, seq: int, predictions: int) -> Path | None:
    """`folder` when it holds a finished dataset of these lengths, else None."""
    from bertkit.data.shards import read_manifest

    try:
        s = read_manifest(folder)["settings"]
    except (BertkitError, OSError, KeyError):
        return None
    return folder if (s.get("max_seq_length"), s.get("max_predictions_per_seq")) == (seq, predictions) else None


def rank0_first(make, ready, topo: Topology, timeout_s: float, what: str):
    """`make()` on rank 0; under an outside launcher the other ranks wait until `ready()` returns
    something (the folder is shared) for at most `timeout_s`."""
    if topo.mode != "inside" or topo.rank == 0:
        return make()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = ready()
        if found is not None:
            return found
        time.sleep(1)
    raise BertkitError(f"rank {topo.rank}: {what} did not appear within --dist_timeout {timeout_s:g} s "
                       "(rank 0 makes it; is the folder shared by all workers?)")


def finetuning_steps(args, s: Settings, topo: Topology) -> list[Step]:
    ft = s.finetune
    out = str(Path(args.output_dir or OUTPUT_DIR).resolve())
    dataset = Path(args.dataset_path or DATASET_PATH).resolve()
    if ft.task == "mrpc":
        from bertkit.data.mrpc import find_mrpc

        if not args.dry_run:  # fetched once here, not by every worker
            rank0_first(lambda: find_mrpc(dataset), lambda: _mrpc_ready(dataset), topo, timeout_of(args),
                        f"MRPC in {dataset}")
        data = {"data_dir": str(dataset)}
    else:
        data = {"train_file": str(dataset / "train-v1.1.json"), "predict_file": str(dataset / "dev-v1.1.json")}
        missing = [f for f in data.values() if not Path(f).is_file()]
        if missing and not args.dry_run:
            raise BertkitError(f"--dataset_path {dataset}: no {' or '.join(Path(f).name for f in missing)} "
                               "(SQuAD v1.1 is not fetched automatically; see the seed's links)")
    model = "<downloaded model>" if args.dry_run and not (args.checkpoint_folder or args.bert_config_dir) else (
        rank0_first(lambda: pretrained_model(args), lambda: _model_ready(args), topo, max(timeout_of(args), 3600),
                    "the pretrained model"))
    argv = finetune_argv(ft, data, model, out, s.data_type, args.seed, args.device, args.bf16_config_path,
                         args.overwrite)
    return [Step(f"fine-tuning {ft.task}, {ft.epochs:g} epochs, batch {ft.batch_size} x {ft.world_size} "
                 f"worker(s), seq {ft.max_seq_length}, lr {ft.learning_rate:g}", argv)]


def _mrpc_ready(dataset: Path) -> dict | None:
    from bertkit.data.mrpc import find_mrpc

    try:
        return find_mrpc(dataset, download=False)
    except BertkitError:
        return None


def _model_ready(args) -> str | None:
    from bertkit.checkpoint import is_model_folder
    from bertkit.download import model_name

    folder = model_cache() / model_name(args.model_variant)
    return str(folder) if is_model_folder(folder) else None


# ---- entry ---------------------------------------------------------------------------------------

def notes_for_tf_flags(args) -> list[str]:
    notes = []
    if args.enable_scoped_allocator:
        notes.append("--enable_scoped_allocator is a TensorFlow graph optimisation; PyTorch DDP always fuses "
                     "gradients into buckets, so it has no effect here")
    if args.horovod_hierarchical_allreduce:
        notes.append("--horovod_hierarchical_allreduce is a Horovod option; NCCL picks its own algorithms across "
                     "servers and gloo has none, so it has no effect here")
    return notes


def main(argv: list[str], shell=None) -> int:
    """`bertkit demo` / `demo_bert`. `shell(host, command) -> argv` replaces ssh for MULTI_HLS_IPS."""
    args = parser().parse_args(argv)
    if args.dist_timeout is not None and not args.dist_timeout > 0:
        raise BertkitError(f"--dist_timeout must be > 0, got {args.dist_timeout:g}")
    if args.command is None:
        from bertkit import demo

        return demo.run(args, shell)
    if args.quick:
        raise BertkitError("--quick is for the demo (no -c/--command)")
    topo = topology(args)
    s = settings(args, topo.world_size)
    if not args.dry_run:
        check_hosts(topo, shell)
    for note in (*notes_for_tf_flags(args), *s.notes):
        if topo.rank == 0:
            say(f"note: {note}")
    if args.run_phase2 and s.command != "pretraining":
        raise BertkitError("--run_phase2 is for pretraining")
    if args.run_phase2 and s.test_set != "bookswiki":
        raise BertkitError("--run_phase2: overfit has one phase")
    steps = pretraining_steps(args, s, topo) if s.command == "pretraining" else finetuning_steps(args, s, topo)
    if args.dry_run:
        show(steps, topo, args, shell)
        return 0
    return execute(steps, topo, args, shell)
