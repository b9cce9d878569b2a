"""A seed command line as a plan: the bertkit steps that pretraining (phase 1, phase 2; overfit) or
fine-tuning (MRPC, SQuAD) take, with their data and models made ready first."""

from __future__ import annotations

import time
from pathlib import Path

from bertkit import BertkitError
from bertkit.data.bundled import demo_dataset
from bertkit.data.shards import read_manifest
from bertkit.launcher.argv import finetune_argv, pretrain_argv
from bertkit.launcher.steps import Step, timeout_of
from bertkit.launcher.paths import (check_phase1_done, find_phase_data, init_checkpoint, phase1_last_checkpoint,
                                    pretrained_model, model_ready)
from bertkit.launcher.recipes import DATASET_PATH, OUTPUT_DIR, SAVE_CKPT_STEPS, Phase, Settings, describe
from bertkit.launcher.seed_flags import say
from bertkit.launcher.topology import Topology
from bertkit.tasks.finetune.mrpc_data import find_mrpc


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


def overfit_dataset(args, phase: Phase, topo: Topology, out: Path) -> Path:
    """The seed's overfit data, made from bertkit's bundled corpus (once; rank 0 under an outside
    launcher while the others wait for it)."""
    folder = Path(args.dataset_path).resolve() if args.dataset_path else out / "dataset"
    if args.dry_run:
        return folder
    return rank0_first(lambda: demo_dataset(folder, phase.max_seq_length, phase.max_predictions_per_seq,
                                            seed=args.seed),
                       lambda: dataset_ready(folder, phase.max_seq_length, phase.max_predictions_per_seq),
                       topo, timeout_of(args), f"the dataset {folder}")


def dataset_ready(folder: Path, seq: int, predictions: int) -> Path | None:
    """`folder` when it holds a finished dataset of these lengths, else None."""
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
        if not args.dry_run:  # fetched once here, not by every worker
            rank0_first(lambda: find_mrpc(dataset), lambda: mrpc_ready(dataset), topo, timeout_of(args),
                        f"MRPC in {dataset}")
        data = {"data_dir": str(dataset)}
    else:
        data = {"train_file": str(dataset / "train-v1.1.json"), "predict_file": str(dataset / "dev-v1.1.json")}
        missing = [f for f in data.values() if not Path(f).is_file()]
        if missing and not args.dry_run:
            raise BertkitError(f"--dataset_path {dataset}: no {' or '.join(Path(f).name for f in missing)} "
                               "(SQuAD v1.1 is not fetched automatically; see the seed's links)")
    model = "<downloaded model>" if args.dry_run and not (args.checkpoint_folder or args.bert_config_dir) else (
        rank0_first(lambda: pretrained_model(args), lambda: model_ready(args), topo, max(timeout_of(args), 3600),
                    "the pretrained model"))
    argv = finetune_argv(ft, data, model, out, s.data_type, args.seed, args.device, args.bf16_config_path,
                         args.overwrite)
    return [Step(f"fine-tuning {ft.task}, {ft.epochs:g} epochs, batch {ft.batch_size} x {ft.world_size} "
                 f"worker(s), seq {ft.max_seq_length}, lr {ft.learning_rate:g}", argv)]


def mrpc_ready(dataset: Path) -> dict | None:
    try:
        return find_mrpc(dataset, download=False)
    except BertkitError:
        return None
