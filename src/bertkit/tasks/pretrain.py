"""`bertkit pretrain`: masked-LM + next-sentence pretraining with LAMB, taking the flags of the
seed's run_pretraining.py. One process per device; for many, start it with torchrun:

    torchrun --nproc_per_node 8 -m bertkit pretrain --input_files_dir data/seq128 \\
        --bert_config_file large --output_dir out/phase1 --train_batch_size 64 \\
        --num_accumulation_steps 128 --max_seq_length 128 --max_predictions_per_seq 20 \\
        --num_train_steps 7038 --num_warmup_steps 2000 --learning_rate 6e-3 --precision bf16
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bertkit import BertkitError
from bertkit.checkpoint import load_weights
from bertkit.config import VARIANTS, BertConfig, resolve
from bertkit.data.bundled import vocab_path
from bertkit.data.masking import word_starts
from bertkit.data.pretraining import PretrainingDataset, collate
from bertkit.distributed import Dist, init, parallelize
from bertkit.flags import ArgumentParser, flag, parse_bool
from bertkit.model import BertForPreTraining
from bertkit.optim import WarmupPolyDecay, long_warmup_note, make_optimizer
from bertkit.ranks import env_ranks
from bertkit.stream import Stream
from bertkit.tasks.common import (add_run_flags, fp32_patterns, initial_weights, open_log, run_command,
                                  start_or_resume, write_results)
from bertkit.tokenizer import load_vocab
from bertkit.train import CheckpointManager, LoopConfig, StopFlag, fit, infer, log_evaluation


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="bertkit pretrain", description=(
        "Pretrain BERT (masked LM + next sentence prediction) on bertkit shards or Google TFRecords. "
        "Flags take the seed's run_pretraining.py names, in snake_case or kebab-case."))
    flag(p, "input_files_dir", required=True, help="Training data: a bertkit dataset folder, TFRecord files or a folder of them.")
    flag(p, "eval_files_dir", default=None, help="Evaluation data, same formats (used with --do_eval).")
    flag(p, "bert_config_file", default=None, help=f"bert_config.json, or a variant name: {', '.join(VARIANTS)}.")
    flag(p, "model_variant", default=None, help="Same as --bert_config_file with a variant name.")
    flag(p, "init_checkpoint", default=None, help=(
        "Start from these weights (fresh optimizer and schedule, as phase 2 starts from phase 1): a bertkit "
        "checkpoint folder, a training output folder (its newest checkpoint) or its OUTPUT_DIR/model.ckpt-N (step N, "
        "TensorFlow's name), a Google checkpoint (zip, folder or prefix .../bert_model.ckpt) or a Hugging Face folder."))
    flag(p, "vocab_file", default=None, help=(
        "vocab.txt (default: the init checkpoint's, the dataset's, the one beside --bert_config_file, else Google's "
        "uncased vocab)."))
    flag(p, "do_lower_case", type=parse_bool, default=True, help="The vocabulary is uncased (stored with checkpoints).")
    flag(p, "train_batch_size", type=int, default=32, help="Sequences per micro-batch, per process.")
    flag(p, "eval_batch_size", type=int, default=8, help="Sequences per evaluation batch, per process.")
    flag(p, "max_seq_length", type=int, default=128, help="Longest sequence. Must match data generation.")
    flag(p, "max_predictions_per_seq", type=int, default=20, help="Most masked positions per sequence. Must match data generation.")
    flag(p, "num_train_steps", type=int, default=100000, help="Optimizer steps in all (a resumed run counts the steps done).")
    flag(p, "num_accumulation_steps", type=int, default=1, help="Micro-batches per optimizer step.")
    flag(p, "num_warmup_steps", type=int, default=10000, help=(
        "Linear warm-up steps before polynomial decay. May exceed --num_train_steps (the rate then stays in "
        "warm-up, with a note), as in Google's and NVIDIA's schedules."))
    flag(p, "learning_rate", type=float, default=5e-5, help="Peak learning rate.")
    flag(p, "poly_power", type=float, default=0.5, help="Power of the polynomial decay after warm-up (NVIDIA's recipe: 0.5).")
    flag(p, "optimizer", choices=("lamb", "adamw"), default="lamb", help="LAMB (default) or AdamW.")
    flag(p, "weight_decay", type=float, default=0.01, help="Weight decay, except biases and LayerNorm.")
    flag(p, "save_checkpoints_steps", type=int, default=1000, help="Checkpoint every N steps, and at the end.")
    flag(p, "do_train", type=parse_bool, default=True, help="Train.")
    flag(p, "do_eval", type=parse_bool, default=False, help="Report masked-LM accuracy and loss on --eval_files_dir.")
    flag(p, "max_eval_steps", type=int, default=100, help="Most evaluation batches.")
    flag(p, "eval_every", type=int, default=0, help="With --do_eval, also evaluate every N steps (0: at the end only).")
    flag(p, "masked_lm_prob", type=float, default=None,
         help="Share of tokens masked at load time (bertkit shards; default: the dataset's own, 0.15 unless made otherwise).")
    flag(p, "whole_word_mask", type=parse_bool, default=False, help="Mask whole words at load time.")
    flag(p, "skip_corrupt_records", type=parse_bool, default=False,
         help="Skip TFRecord records that fail their CRC (counted and reported) instead of stopping.")
    flag(p, "allreduce_post_accumulation", type=parse_bool, default=True,
         help="All-reduce gradients once per step, after the last micro-batch (default). False: after each.")
    add_run_flags(p)
    # The seed's flags for TensorFlow and Horovod, accepted so its command lines run unchanged.
    flag(p, "horovod", type=parse_bool, default=False, help="Accepted for the seed; ranks come from torchrun/mpirun/SLURM.")
    flag(p, "use_xla", type=parse_bool, default=False, help="Accepted for the seed; has no effect (see --compile).")
    flag(p, "amp", type=parse_bool, default=False, help="The seed's fp16 AMP switch: --amp means --precision fp16.")
    return p


def pretraining_loss(model, b: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Masked-LM cross-entropy over the real masked positions plus next-sentence cross-entropy."""
    w = b["masked_lm_weights"]  # (B, P), 1 for real predictions, 0 for padding
    real = w != 0  # (B, P); NaN weights stay in, so that a NaN batch shows in the loss
    mlm, nsp = model(b["input_ids"], b["segment_ids"], b["input_mask"], b["masked_lm_positions"], real)  # (Np,V), (B,2)
    w, labels = w[real], b["masked_lm_ids"][real]  # (Np,) each
    ce = F.cross_entropy(mlm.float(), labels, reduction="none")  # (Np,)
    n = w.sum().clamp(min=1.0)
    mlm_loss = (ce * w).sum() / n
    nsp_loss = F.cross_entropy(nsp.float(), b["next_sentence_labels"])
    with torch.no_grad():
        mlm_acc = ((mlm.argmax(-1) == labels).float() * w).sum() / n
        nsp_acc = (nsp.argmax(-1) == b["next_sentence_labels"]).float().mean()
    return mlm_loss + nsp_loss, {"mlm_loss": mlm_loss, "nsp_loss": nsp_loss, "mlm_acc": mlm_acc, "nsp_acc": nsp_acc}


def drop_full_mask(batch: dict) -> dict:
    """Leave out an attention mask with no padding in it (checked on the CPU, before the batch
    moves): attention without a mask takes the fastest kernels (flash attention on GPUs)."""
    if batch["input_mask"].all():
        batch["input_mask"] = None
    return batch


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    return run(args)


def _dataset(path: str, args, vocab: dict) -> PretrainingDataset:
    return PretrainingDataset(path, args.max_seq_length, args.max_predictions_per_seq, len(vocab),
                              (vocab["[CLS]"], vocab["[SEP]"], vocab["[MASK]"], vocab["[PAD]"]),
                              seed=args.seed, masked_lm_prob=args.masked_lm_prob,
                              whole_word_mask=args.whole_word_mask, skip_corrupt=args.skip_corrupt_records,
                              word_start=word_starts(sorted(vocab, key=vocab.__getitem__)) if args.whole_word_mask
                              else None)


def validate(args) -> None:
    """Check the flags together before any work starts."""
    if args.amp and args.precision is None:
        args.precision = "fp16"
    args.precision = args.precision or "fp32"
    if args.model_variant and args.bert_config_file:
        raise BertkitError("give --bert_config_file or --model_variant, not both")
    args.bert_config_file = args.bert_config_file or args.model_variant
    for name in ("train_batch_size", "eval_batch_size", "max_seq_length", "max_predictions_per_seq",
                 "num_accumulation_steps"):
        if getattr(args, name) < 1:
            raise BertkitError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.num_warmup_steps < 0 or args.num_train_steps < 0:
        raise BertkitError("--num_warmup_steps and --num_train_steps must be >= 0")
    if args.masked_lm_prob is not None and not 0 < args.masked_lm_prob < 1:
        raise BertkitError(f"--masked_lm_prob must be in (0, 1), got {args.masked_lm_prob}")
    if args.learning_rate <= 0:
        raise BertkitError(f"--learning_rate must be > 0, got {args.learning_rate}")
    if args.do_eval and not args.eval_files_dir:
        raise BertkitError("--do_eval needs --eval_files_dir")
    if not args.do_train and not args.do_eval:
        raise BertkitError("nothing to do: give --do_train or --do_eval")
    for name, needed in (("input_files_dir", args.do_train), ("eval_files_dir", args.do_eval)):
        if needed and not Path(getattr(args, name)).exists():  # before any model is built
            raise BertkitError(f"--{name}: {getattr(args, name)}: no such file or folder")
    note = long_warmup_note(args.num_warmup_steps, args.num_train_steps)
    if note and args.do_train and env_ranks()[0] == 0:
        print(note, file=sys.stderr)
    if args.use_xla:
        print("note: --use_xla is a TensorFlow option; bertkit's equivalent is --compile", file=sys.stderr)


def run(args) -> int:
    validate(args)
    patterns = fp32_patterns(args.bf16_config_path, args.precision)
    return run_command(lambda stop: _run(args, init(args.device, tf32=args.tf32), patterns, stop), args.output_dir)


def _run(args, d: Dist, patterns: tuple[str, ...], stop: StopFlag) -> int:
    out = Path(args.output_dir)
    init_config, init_state, init_vocab, lowercase = initial_weights(args.init_checkpoint, args.do_lower_case)
    config = resolve(args.bert_config_file) if args.bert_config_file else init_config
    if config is None:
        raise BertkitError("give --bert_config_file (a file or variant name) or --init_checkpoint")
    data_vocab = Path(args.input_files_dir) / "vocab.txt"  # a bertkit dataset records its vocab
    data_vocab = data_vocab if data_vocab.is_file() else None
    # Google's checkpoint folders hold vocab.txt beside bert_config.json (the seed's run_pretraining.py
    # examples name only the config): that vocabulary, before the bundled one.
    config_vocab = Path(args.bert_config_file).parent / "vocab.txt" \
        if args.bert_config_file and Path(args.bert_config_file).is_file() else None
    config_vocab = config_vocab if config_vocab is not None and config_vocab.is_file() else None
    vocab_file = Path(args.vocab_file) if args.vocab_file else (init_vocab or data_vocab or config_vocab or vocab_path())
    vocab = load_vocab(vocab_file)
    if data_vocab is not None and load_vocab(data_vocab) != vocab:
        raise BertkitError(f"{args.input_files_dir} was made with another vocabulary than {vocab_file}")
    if args.bert_config_file in VARIANTS and len(vocab) != config.vocab_size:
        config = BertConfig(**{**config.to_dict(), "vocab_size": len(vocab)})
    if len(vocab) != config.vocab_size:
        raise BertkitError(f"{vocab_file}: {len(vocab)} tokens, but the config says vocab_size {config.vocab_size}")
    if init_config is not None and init_config != config:
        raise BertkitError(f"--init_checkpoint {args.init_checkpoint} has another model shape than --bert_config_file")
    if args.max_seq_length > config.max_position_embeddings:
        raise BertkitError(f"--max_seq_length {args.max_seq_length} exceeds the model's "
                           f"max_position_embeddings {config.max_position_embeddings}")

    global_batch = args.train_batch_size * args.num_accumulation_steps * d.world_size
    run_id = {"task": "pretrain", "config": config.to_dict(), "input_files_dir": str(args.input_files_dir),
              "train_batch_size": args.train_batch_size, "global_batch": global_batch,
              "max_seq_length": args.max_seq_length, "max_predictions_per_seq": args.max_predictions_per_seq,
              "learning_rate": args.learning_rate, "num_warmup_steps": args.num_warmup_steps,
              "optimizer": args.optimizer, "poly_power": args.poly_power, "seed": args.seed,
              "precision": args.precision, "init_checkpoint": args.init_checkpoint,
              "num_train_steps": args.num_train_steps}
    torch.manual_seed(args.seed)  # the same initial weights on every rank and in every run
    model = BertForPreTraining(config)
    model.bert.unpad = args.unpad
    if init_state is not None:
        load_weights(model, init_state, str(args.init_checkpoint))

    log = open_log(out, args.dllog_path, d, args.num_train_steps, "pretrain", parameters=vars(args))
    ckpt = CheckpointManager(out, config, vocab_file, lowercase, run_id, args.save_checkpoints_steps,
                             args.keep_checkpoints)
    start_step, scaler_state, optimizer = 0, None, None
    if args.do_train:
        optimizer, start_step, scaler_state = start_or_resume(
            model, lambda m: make_optimizer(args.optimizer, m, lr=args.learning_rate, weight_decay=args.weight_decay),
            ckpt, args.resume, args.overwrite, d, log)
    ddp_model = parallelize(model, d, compile=args.compile)
    log.print(f"pretraining {config.num_hidden_layers}L/{config.hidden_size}H on {d.world_size} process(es), "
              f"{d.device.type}, {args.precision}; global batch {global_batch} = {args.train_batch_size} per "
              f"process x {args.num_accumulation_steps} accumulation x {d.world_size} process(es)")

    eval_fn = None
    if args.do_eval:
        eval_data = _dataset(args.eval_files_dir, args, vocab)
        eval_fn = lambda m: evaluate(m, eval_data, args, d)  # noqa: E731
    result: dict = {}
    if args.do_train:
        train_data = _dataset(args.input_files_dir, args, vocab)
        stream = Stream(train_data, args.train_batch_size,
                        lambda s: drop_full_mask(collate(s, args.max_predictions_per_seq)), seed=args.seed,
                        rank=d.rank, world_size=d.world_size)
        loop = LoopConfig(total_steps=args.num_train_steps, lr=args.learning_rate,
                          schedule=WarmupPolyDecay(args.num_warmup_steps, args.num_train_steps, args.poly_power),
                          accumulation=args.num_accumulation_steps, precision=args.precision,
                          log_every=args.log_every, seed=args.seed, eval_every=args.eval_every,
                          sync_each_micro_step=not args.allreduce_post_accumulation,
                          skip_nonfinite=args.skip_nonfinite, fp32_modules=patterns)
        result = fit(ddp_model, optimizer, pretraining_loss, stream, loop, d, log, ckpt, start_step, eval_fn,
                     scaler_state, stop)
        skipped = getattr(train_data, "corrupt_skipped", 0)
        if skipped:
            log.print(f"skipped {skipped} corrupt record(s) in {args.input_files_dir}")
            result["corrupt_records_skipped"] = skipped
    elif eval_fn is not None:
        result = log_evaluation(eval_fn, ddp_model, 0, log)
    log.close(result)
    write_results(out / "results.json", result, d)
    return 0


def evaluate(model, data, args, d: Dist) -> dict:
    """Masked-LM accuracy and loss, next-sentence accuracy over the first batches of the evaluation
    set (fixed masks), through `infer`: the same numbers whatever the number of ranks."""
    data.set_epoch(0)
    items = [data[i] for i in range(min(len(data), args.max_eval_steps * args.eval_batch_size))]
    rows = infer(model, items, lambda s: collate(s, args.max_predictions_per_seq), evaluation_rows,
                 args.eval_batch_size, d, args.precision, length=lambda item: len(item["input_ids"]))
    correct, loss, count, nsp_correct = np.sum(rows, axis=0) if rows else np.zeros(4)
    return {"mlm_accuracy": correct / max(count, 1), "mlm_loss": loss / max(count, 1),
            "nsp_accuracy": nsp_correct / max(len(rows), 1), "sequences": len(rows)}


def evaluation_rows(model, b: dict) -> list[np.ndarray]:
    """Per sequence: (masked-LM hits, masked-LM loss sum, masked positions, next-sentence hit), float64."""
    mlm, nsp = model(b["input_ids"], b["segment_ids"], b["input_mask"], b["masked_lm_positions"])  # (B,P,V), (B,2)
    w = b["masked_lm_weights"].double()  # (B, P)
    ce = F.cross_entropy(mlm.flatten(0, 1).float(), b["masked_lm_ids"].flatten(), reduction="none")  # (B*P,)
    hits = (mlm.argmax(-1) == b["masked_lm_ids"]).double() * w  # (B, P)
    rows = torch.stack([hits.sum(1), (ce.double().view_as(w) * w).sum(1), w.sum(1),
                        (nsp.argmax(-1) == b["next_sentence_labels"]).double()], dim=1)  # (B, 4)
    return list(rows.cpu().numpy())
