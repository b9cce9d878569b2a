"""The demo behind `bertkit demo` with no -c/--command: the whole path on bundled data, no download.

1. make a pretraining dataset (sequence length 128) from the bundled WikiText-2 articles;
2. pretrain a tiny BERT (Google's BERT-Tiny shape: 2 layers, 128 wide) on it briefly with LAMB;
3. fine-tune it on the bundled MRPC sample (400 training pairs) and score the 200 dev pairs.

It runs the same `bertkit pretrain` / `bertkit finetune` command lines as the seed's flags do,
through the same launcher: in this process, or with -v N under torchrun. Outputs go to
./bertkit-demo (or -o); running it again resumes, or skips what is done.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from bertkit import BertkitError
from bertkit.data.bundled import ASSETS, corpus_path, demo_dataset
from bertkit.launcher.argv import finetune_argv, pretrain_argv
from bertkit.launcher.steps import Step, check_hosts, execute, show, timeout_of
from bertkit.launcher.plans import dataset_ready, rank0_first
from bertkit.launcher.recipes import Finetune, Phase
from bertkit.launcher.seed_flags import parser, say
from bertkit.launcher.topology import detect
from bertkit.tasks.finetune.mrpc_data import metrics, read_mrpc

MRPC_SAMPLE = ASSETS / "mrpc_sample"
OUTPUT_DIR = "bertkit-demo"


@dataclass(frozen=True)
class DemoSize:
    """How much the demo trains. FULL: about 3.5 minutes of CPU time (5.4 minutes of wall time
    measured on two cores shared with other work); QUICK: about a quarter of that."""

    pretrain_steps: int
    pretrain_batch: int  # global: split over the workers
    warmup: int
    pretrain_lr: float  # LAMB peak rate
    finetune_epochs: float
    finetune_batch: int  # global
    finetune_lr: float
    variant: str = "tiny"  # Google's BERT-Tiny shape: 2 layers, 128 wide, 2 heads


FULL = DemoSize(pretrain_steps=80, pretrain_batch=32, warmup=8, pretrain_lr=1e-2,
                finetune_epochs=3, finetune_batch=32, finetune_lr=1e-4)
QUICK = DemoSize(pretrain_steps=5, pretrain_batch=8, warmup=1, pretrain_lr=1e-2,
                 finetune_epochs=1, finetune_batch=32, finetune_lr=1e-4)

# Flags of the seed's command line that mean something for the demo.
DEMO_FLAGS = {"output_dir", "use_horovod", "data_type", "kubernetes_run", "dist_timeout", "device", "seed",
              "overwrite", "quick", "dry_run", "model"}


def check_flags(args) -> None:
    """The demo takes -o, -v, -d and bertkit's run flags; the seed's others need -c/--command."""
    defaults = vars(parser().parse_args([]))
    given = [k for k, v in vars(args).items() if k not in DEMO_FLAGS and v != defaults[k]]
    if given:
        raise BertkitError(f"--{given[0]} needs -c/--command (pretraining or finetuning); without -c bertkit "
                           "runs the demo, which takes -o, -v, -d, --quick and --device")


def steps(args, size: DemoSize, world: int, out: Path, data: Path) -> list:
    """The demo's two bertkit commands, through the launcher's own command-line builders."""
    if size.pretrain_batch % world or size.finetune_batch % world:
        raise BertkitError(f"-v {world}: the demo's batches ({size.pretrain_batch}, {size.finetune_batch}) "
                           "must split evenly over the workers")
    dtype = args.data_type or "fp32"
    phase = Phase("demo", 128, 20, size.pretrain_batch // world, 1, size.pretrain_steps, size.warmup,
                  size.pretrain_lr, world)
    pretrain = pretrain_argv(phase, str(data), str(out / "pretrain"), size.variant, dtype,
                             save_steps=size.pretrain_steps, seed=args.seed, device=args.device,
                             overwrite=args.overwrite) + ["--log_every", "10"]
    ft = Finetune("mrpc", size.finetune_batch // world, 128, size.finetune_epochs, size.finetune_lr, world)
    finetune = finetune_argv(ft, {"data_dir": str(MRPC_SAMPLE)}, str(out / "pretrain"), str(out / "mrpc"), dtype,
                             args.seed, args.device, overwrite=args.overwrite, extra=["--log_every", "5"])
    return [Step(f"pretraining a tiny BERT ({size.pretrain_steps} steps of {size.pretrain_batch} sequences)",
                 pretrain),
            Step(f"fine-tuning it on the MRPC sample ({size.finetune_epochs:g} "
                 f"epoch{'' if size.finetune_epochs == 1 else 's'})", finetune)]


def run(args, shell=None) -> int:
    check_flags(args)
    if not (MRPC_SAMPLE / "train.tsv").is_file():
        raise BertkitError(f"{MRPC_SAMPLE}: the bundled MRPC sample is not there (removed for its "
                           "non-commercial licence?); the demo needs it")
    size = QUICK if args.quick else FULL
    topo = detect(args)
    out = Path(args.output_dir or OUTPUT_DIR).resolve()
    data = out / "data"
    plan = steps(args, size, topo.world_size, out, data)
    if args.dry_run:
        show(plan, topo, args, shell)
        return 0
    started = time.monotonic()
    check_hosts(topo, shell)
    if topo.rank == 0:
        say(f"WikiText-2 sample -> tiny BERT -> MRPC sample; outputs in {out}")
        say(f"[0/2] making the pretraining dataset from {corpus_path().name} (13 Wikipedia articles)")
    rank0_first(lambda: demo_dataset(data, 128, 20, seed=args.seed), lambda: dataset_ready(data, 128, 20),
                topo, timeout_of(args), f"the dataset {data}")
    rc = execute(plan, topo, args, shell)
    if rc == 0 and topo.rank == 0:
        print(report(out, time.monotonic() - started), flush=True)
    return rc


def pretraining_line(logged: list[dict]) -> str:
    steps = [(r["step"], r["mlm_loss"]) for r in logged if "mlm_loss" in r]
    if not steps:
        return "  pretraining: done"
    (s0, l0), (s1, l1) = steps[0], steps[-1]
    if s0 == s1:
        return f"  pretraining: masked-LM loss {l1:.2f} after {s1} steps"
    return f"  pretraining: masked-LM loss {l0:.2f} at step {s0} -> {l1:.2f} at step {s1}"


def report(out: Path, seconds: float) -> str:
    """What the demo did, its scores beside the majority-class baseline, and where the outputs are."""
    results = json.loads((out / "mrpc" / "eval_results.json").read_text())
    logged = [json.loads(line) for line in (out / "pretrain" / "log.jsonl").read_text().splitlines() if line.strip()]
    labels = [ex.label for ex in read_mrpc(MRPC_SAMPLE / "dev.tsv")]
    base = metrics([1] * len(labels), labels)  # always "paraphrase", the majority class
    lines = [
        "",
        f"bertkit demo: done in {seconds / 60:.1f} min",
        pretraining_line(logged),
        f"  MRPC sample, {results['examples']} dev pairs: accuracy {results['accuracy']:.3f}, F1 {results['f1']:.3f}"
        f"  (majority class: accuracy {base['accuracy']:.3f}, F1 {base['f1']:.3f})",
        f"  outputs: {out}/",
        f"    data/      the pretraining dataset ({out / 'data' / 'manifest.json'})",
        f"    pretrain/  the tiny BERT (ckpt-*/), log.jsonl, results.json",
        f"    mrpc/      the fine-tuned model, eval_results.json, eval_predictions.tsv",
        "  A tiny model trained for minutes on 190 KB of text stays near the baseline; for real scores,",
        "  fine-tune a pretrained model: demo_bert -c finetuning -m base -d fp32 -t mrpc --dataset_path DIR",
        f"  (The MRPC sample is Microsoft's, for non-commercial use only: {MRPC_SAMPLE / 'README.md'})",
    ]
    return "\n".join(lines)
