"""The seed's demo_bert.py flags, with its defaults and help, and the launcher's voice on stderr."""

from __future__ import annotations

import sys
from pathlib import Path

from bertkit.config import VARIANTS
from bertkit.flags import ArgumentParser, flag, parse_bool
from bertkit.launcher.recipes import (DATASET_PATH, FINETUNE_LR, FINETUNING_SETS, OUTPUT_DIR, PRETRAINING_SETS,
                                      SAVE_CKPT_STEPS)


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
         help="Pretrained model to fine-tune: bertkit, Google (folder, zip or prefix .../bert_model.ckpt) or Hugging Face.")
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


def say(msg: str) -> None:
    print(f"{prog_name()}: {msg}", file=sys.stderr, flush=True)
