"""`bertkit pretrain`: masked-LM + next-sentence pretraining with LAMB, taking the flags of the
seed's run_pretraining.py. One process per device; for many, start it with torchrun:

    torchrun --nproc_per_node 8 -m bertkit pretrain --input_files_dir data/seq128 \\
        --bert_config_file large --output_dir out/phase1 --train_batch_size 64 \\
        --num_accumulation_steps 128 --max_seq_length 128 --max_predictions_per_seq 20 \\
        --num_train_steps 7038 --num_warmup_steps 2000 --learning_rate 6e-3 --precision bf16
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bertkit import BertkitError
from bertkit.checkpoint import load_weights
from bertkit.config import VARIANTS
from bertkit.data.masking import word_starts
from bertkit.data.pretraining import PretrainingDataset, collate
from bertkit.distributed import Dist, init, matmul_peak, parallelize
from bertkit.flags import ArgumentParser, flag, parse_bool
from bertkit.model import BertForPreTraining, pretraining_flops
from bertkit.optim import WarmupPolyDecay, long_warmup_note, make_optimizer
from bertkit.stream import Stream
from bertkit.tasks.common import (ModelSettings, RunSettings, add_run_flags, open_log, resolve_model, run_command,
                                  settings_record, start_or_resume, write_results)
from bertkit.tasks.pretrain_recipe import choose_schedule
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
    flag(p, "do_lower_case", type=parse_bool, default=None,
         help="The vocabulary is uncased (stored with checkpoints; default: the init checkpoint's, else true).")
    flag(p, "train_batch_size", type=int, default=32, help="Sequences per micro-batch, per process.")
    flag(p, "eval_batch_size", type=int, default=8, help="Sequences per evaluation batch, per process.")
    flag(p, "max_seq_length", type=int, default=128, help="Longest sequence. Must match data generation.")
    flag(p, "max_predictions_per_seq", type=int, default=20, help="Most masked positions per sequence. Must match data generation.")
    flag(p, "num_train_steps", type=int, default=100000, help="Optimizer steps in all (a resumed run counts the steps done).")
    flag(p, "num_accumulation_steps", type=int, default=1, help="Micro-batches per optimizer step.")
    flag(p, "num_warmup_steps", type=int, default=None, help=(
        "Linear warm-up steps before polynomial decay (default: run_pretraining.py's 10000, or the "
        "continued-pretraining recipe's). May exceed --num_train_steps (the rate then stays in warm-up, with "
        "a note), as in Google's and NVIDIA's schedules."))
    flag(p, "learning_rate", type=float, default=None, help=(
        "Peak learning rate, exactly as given. Default: with --init_checkpoint, the continued-pretraining "
        "recipe for the optimizer and global batch (printed at start, recorded in run.json); without, "
        "run_pretraining.py's 5e-5."))
    flag(p, "poly_power", type=float, default=0.5, help="Power of the polynomial decay after warm-up (NVIDIA's recipe: 0.5).")
    flag(p, "optimizer", choices=("lamb", "adamw"), default="lamb", help="LAMB (default) or AdamW.")
    flag(p, "weight_decay", type=float, default=0.01, help="Weight decay, except biases and LayerNorm.")
    flag(p, "save_checkpoints_steps", type=int, default=1000, help="Checkpoint every N steps, and at the end.")
    flag(p, "max_seconds", type=float, default=None, help=(
        "Time budget: stop after N seconds of training in this process (evaluation left out), save a "
        "checkpoint, run the final evaluation and exit 0. The same command continues the run for another N."))
    flag(p, "peak_tflops", type=float, default=None, help=(
        "Peak TFLOP/s of one device, for the MFU in the log (default: a matrix product in the run's "
        "precision, measured at start for under a second)."))
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


def pretraining_loss(model, b: dict, nsp: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Masked-LM cross-entropy over the real masked positions plus next-sentence cross-entropy
    (without `nsp`, for data made with --no_nsp: masked LM alone)."""
    w = b["masked_lm_weights"]  # (B, P), 1 for real predictions, 0 for padding
    real = w != 0  # (B, P); NaN weights stay in, so that a NaN batch shows in the loss
    mlm, logits_nsp = model(b["input_ids"], b["segment_ids"], b["input_mask"], b["masked_lm_positions"], real)  # (Np,V), (B,2)
    w, labels = w[real], b["masked_lm_ids"][real]  # (Np,) each
    ce = F.cross_entropy(mlm.float(), labels, reduction="none")  # (Np,)
    n = w.sum().clamp(min=1.0)
    mlm_loss = (ce * w).sum() / n
    with torch.no_grad():
        mlm_acc = ((mlm.argmax(-1) == labels).float() * w).sum() / n
    if not nsp:
        return mlm_loss, {"mlm_loss": mlm_loss, "mlm_acc": mlm_acc}
    nsp_loss = F.cross_entropy(logits_nsp.float(), b["next_sentence_labels"])
    with torch.no_grad():
        nsp_acc = (logits_nsp.argmax(-1) == b["next_sentence_labels"]).float().mean()
    return mlm_loss + nsp_loss, {"mlm_loss": mlm_loss, "nsp_loss": nsp_loss, "mlm_acc": mlm_acc, "nsp_acc": nsp_acc}


def batch_flops(config, batch: dict) -> float:
    """Training FLOPs of a pretraining batch, counted at its real tokens and masked positions
    (`pretraining_flops` per sequence): what the MFU of the log divides by the time."""
    ids, mask = batch["input_ids"], batch["input_mask"]  # (B, T) each; the mask None without padding
    T = mask.sum(1) if mask is not None else torch.full((len(ids),), ids.shape[1])  # (B,)
    P = (batch["masked_lm_weights"] != 0).sum(1)  # (B,)
    return float(pretraining_flops(config, T.double(), P.double()).sum())


def peak_flops(s: PretrainSettings, d: Dist, log) -> float:
    """--peak_tflops, or a matrix product measured now on this process's device and threads."""
    if s.peak_tflops:
        return s.peak_tflops * 1e12
    peak = matmul_peak(d.device, s.run.precision)
    where = f"{torch.get_num_threads()} thread(s)" if d.device.type == "cpu" else str(d.device)
    log.print(f"MFU against {peak / 1e12:.3g} TFLOP/s: a {s.run.precision} matrix product measured on {where} "
              "(--peak_tflops sets it)")
    return peak


def drop_full_mask(batch: dict) -> dict:
    """Leave out an attention mask with no padding in it (checked on the CPU, before the batch
    moves): attention without a mask takes the fastest kernels (flash attention on GPUs)."""
    if batch["input_mask"].all():
        batch["input_mask"] = None
    return batch


@dataclass(frozen=True)
class PretrainSettings:
    """`bertkit pretrain`'s settings, from its flags (same names, see their help), checked together
    before any work starts and recorded in OUTPUT_DIR/run.json."""

    input_files_dir: str
    eval_files_dir: str | None
    train_batch_size: int
    eval_batch_size: int
    max_seq_length: int
    max_predictions_per_seq: int
    num_train_steps: int
    num_accumulation_steps: int
    num_warmup_steps: int | None  # None until `resolved` (pretrain_recipe)
    learning_rate: float | None
    poly_power: float
    optimizer: str
    weight_decay: float
    save_checkpoints_steps: int
    max_seconds: float | None
    peak_tflops: float | None
    do_train: bool
    do_eval: bool
    max_eval_steps: int
    eval_every: int
    masked_lm_prob: float | None
    whole_word_mask: bool
    skip_corrupt_records: bool
    allreduce_post_accumulation: bool
    model: ModelSettings
    run: RunSettings
    schedule: str = "flags"  # where the rate and warm-up came from (pretrain_recipe.Schedule.source)

    def __post_init__(self) -> None:
        for name in ("train_batch_size", "eval_batch_size", "max_seq_length", "max_predictions_per_seq",
                     "num_accumulation_steps"):
            if getattr(self, name) < 1:
                raise BertkitError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if (self.num_warmup_steps or 0) < 0 or self.num_train_steps < 0:
            raise BertkitError("--num_warmup_steps and --num_train_steps must be >= 0")
        if self.masked_lm_prob is not None and not 0 < self.masked_lm_prob < 1:
            raise BertkitError(f"--masked_lm_prob must be in (0, 1), got {self.masked_lm_prob}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise BertkitError(f"--learning_rate must be > 0, got {self.learning_rate}")
        for name in ("max_seconds", "peak_tflops"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise BertkitError(f"--{name} must be > 0, got {getattr(self, name)}")
        if self.do_eval and not self.eval_files_dir:
            raise BertkitError("--do_eval needs --eval_files_dir")
        if not self.do_train and not self.do_eval:
            raise BertkitError("nothing to do: give --do_train or --do_eval")
        for name, needed in (("input_files_dir", self.do_train), ("eval_files_dir", self.do_eval)):
            if needed and not Path(getattr(self, name)).exists():  # before any model is built
                raise BertkitError(f"--{name}: {getattr(self, name)}: no such file or folder")

    @classmethod
    def from_args(cls, args) -> PretrainSettings:
        if args.model_variant and args.bert_config_file:
            raise BertkitError("give --bert_config_file or --model_variant, not both")
        model = ModelSettings(args.bert_config_file or args.model_variant, args.init_checkpoint, args.vocab_file,
                              args.do_lower_case)
        own = {f.name: getattr(args, f.name) for f in fields(cls) if f.name not in ("model", "run", "schedule")}
        return cls(**own, model=model, run=RunSettings.from_args(args, "fp16" if args.amp else "fp32"))

    def resolved(self, global_batch: int) -> tuple[PretrainSettings, str | None]:
        """These settings with the rate and warm-up chosen (`pretrain_recipe`), and the line to print."""
        chosen = choose_schedule(self.learning_rate, self.num_warmup_steps, self.optimizer, global_batch,
                                 self.num_train_steps, self.model.init_checkpoint)
        return dataclasses.replace(self, learning_rate=chosen.learning_rate, num_warmup_steps=chosen.num_warmup_steps,
                                   schedule=chosen.source), chosen.note


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    s = PretrainSettings.from_args(args)
    if args.use_xla:
        print("note: --use_xla is a TensorFlow option; bertkit's equivalent is --compile", file=sys.stderr)
    return run_command(lambda stop: train_and_evaluate(s, init(s.run.device, tf32=s.run.tf32), stop), s.run.output_dir)


def dataset(path: str, s: PretrainSettings, vocab: dict) -> PretrainingDataset:
    return PretrainingDataset(path, s.max_seq_length, s.max_predictions_per_seq, len(vocab),
                              (vocab["[CLS]"], vocab["[SEP]"], vocab["[MASK]"], vocab["[PAD]"]),
                              seed=s.run.seed, masked_lm_prob=s.masked_lm_prob,
                              whole_word_mask=s.whole_word_mask, skip_corrupt=s.skip_corrupt_records,
                              word_start=word_starts(sorted(vocab, key=vocab.__getitem__)) if s.whole_word_mask
                              else None)


def train_and_evaluate(s: PretrainSettings, d: Dist, stop: StopFlag) -> int:
    run, out = s.run, s.run.output_dir
    data_vocab = Path(s.input_files_dir) / "vocab.txt"  # a bertkit dataset records its vocab
    # Google's checkpoint folders hold vocab.txt beside bert_config.json (the seed's run_pretraining.py
    # examples name only the config): that vocabulary, before the bundled one.
    config_vocab = Path(s.model.bert_config_file).parent / "vocab.txt" \
        if s.model.bert_config_file and Path(s.model.bert_config_file).is_file() else None
    m = resolve_model(s.model, s.max_seq_length, (data_vocab, config_vocab))
    vocab = load_vocab(m.vocab_file)
    if data_vocab.is_file() and load_vocab(data_vocab) != vocab:
        raise BertkitError(f"{s.input_files_dir} was made with another vocabulary than {m.vocab_file}")
    train_data = dataset(s.input_files_dir, s, vocab) if s.do_train else None
    eval_data = dataset(s.eval_files_dir, s, vocab) if s.do_eval else None
    mlm_only = train_data is not None and not train_data.next_sentence_pairs  # data made with --no_nsp

    global_batch = s.train_batch_size * s.num_accumulation_steps * d.world_size
    s, note = s.resolved(global_batch)
    if s.do_train and d.is_main:
        for line in (note, long_warmup_note(s.num_warmup_steps, s.num_train_steps)):
            if line:
                print(line, file=sys.stderr)
    run_id = {"task": "pretrain", "config": m.config.to_dict(), "input_files_dir": str(s.input_files_dir),
              "train_batch_size": s.train_batch_size, "global_batch": global_batch,
              "max_seq_length": s.max_seq_length, "max_predictions_per_seq": s.max_predictions_per_seq,
              "learning_rate": s.learning_rate, "num_warmup_steps": s.num_warmup_steps,
              "optimizer": s.optimizer, "poly_power": s.poly_power, "seed": run.seed,
              "precision": run.precision, "init_checkpoint": s.model.init_checkpoint,
              "num_train_steps": s.num_train_steps}
    torch.manual_seed(run.seed)  # the same initial weights on every rank and in every run
    model = BertForPreTraining(m.config)
    model.bert.unpad = run.unpad
    if m.state is not None:
        load_weights(model, m.state, str(s.model.init_checkpoint))
    if mlm_only:  # no gradient reaches them: out of the optimizer, so nothing (weight decay) moves them
        model.nsp.requires_grad_(False)
        model.bert.pooler.requires_grad_(False)

    log = open_log(out, run.dllog_path, d, s.num_train_steps, "pretrain", parameters=settings_record(s))
    ckpt = CheckpointManager(out, m.config, m.vocab_file, m.lowercase, run_id, s.save_checkpoints_steps,
                             run.keep_checkpoints)
    start_step, scaler_state, optimizer = 0, None, None
    if s.do_train:
        optimizer, start_step, scaler_state = start_or_resume(
            model, lambda net: make_optimizer(s.optimizer, net, lr=s.learning_rate, weight_decay=s.weight_decay),
            ckpt, s, d, log)
    ddp_model = parallelize(model, d, compile=run.compile)
    log.print(f"pretraining {m.config.num_hidden_layers}L/{m.config.hidden_size}H on {d.world_size} process(es), "
              f"{d.device.type}, {run.precision}; global batch {global_batch} = {s.train_batch_size} per "
              f"process x {s.num_accumulation_steps} accumulation x {d.world_size} process(es)")
    if mlm_only:
        log.print(f"masked LM alone: {s.input_files_dir} has no next-sentence pairs (made with --no_nsp); the "
                  "next-sentence head and the pooler keep their weights")

    eval_fn = None
    if eval_data is not None:
        with_nsp = eval_data.next_sentence_pairs and not mlm_only  # an untrained head's score means nothing
        eval_fn = lambda net: evaluate(net, eval_data, s, d, with_nsp)  # noqa: E731
    result: dict = {}
    if train_data is not None:
        stream = Stream(train_data, s.train_batch_size,
                        lambda items: drop_full_mask(collate(items, s.max_predictions_per_seq)), seed=run.seed,
                        rank=d.rank, world_size=d.world_size)
        loop = LoopConfig(total_steps=s.num_train_steps, lr=s.learning_rate,
                          schedule=WarmupPolyDecay(s.num_warmup_steps, s.num_train_steps, s.poly_power),
                          accumulation=s.num_accumulation_steps, precision=run.precision,
                          log_every=run.log_every, seed=run.seed, eval_every=s.eval_every,
                          sync_each_micro_step=not s.allreduce_post_accumulation,
                          skip_nonfinite=run.skip_nonfinite, fp32_modules=run.fp32_modules,
                          max_seconds=s.max_seconds, flops=lambda batch: batch_flops(m.config, batch),
                          peak_flops=peak_flops(s, d, log))
        loss_fn = functools.partial(pretraining_loss, nsp=False) if mlm_only else pretraining_loss
        result = fit(ddp_model, optimizer, loss_fn, stream, loop, d, log, ckpt, start_step, eval_fn,
                     scaler_state, stop)
        result["peak_tflops"] = round(loop.peak_flops / 1e12, 4)
        skipped = getattr(train_data, "corrupt_skipped", 0)
        if skipped:
            log.print(f"skipped {skipped} corrupt record(s) in {s.input_files_dir}")
            result["corrupt_records_skipped"] = skipped
    elif eval_fn is not None:
        result = log_evaluation(eval_fn, ddp_model, 0, log)
    log.close(result)
    write_results(out / "results.json", result, d)
    return 0


def evaluate(model, data, s: PretrainSettings, d: Dist, with_nsp: bool = True) -> dict:
    """Masked-LM accuracy and loss (and next-sentence accuracy `with_nsp`) over the first batches of
    the evaluation set (fixed masks), through `infer`: the same numbers whatever the number of ranks."""
    data.set_epoch(0)
    items = [data[i] for i in range(min(len(data), s.max_eval_steps * s.eval_batch_size))]
    rows = infer(model, items, lambda batch: collate(batch, s.max_predictions_per_seq), evaluation_rows,
                 s.eval_batch_size, d, s.run.precision, length=lambda item: len(item["input_ids"]))
    correct, loss, count, nsp_correct = np.sum(rows, axis=0) if rows else np.zeros(4)
    nsp = {"nsp_accuracy": nsp_correct / max(len(rows), 1)} if with_nsp else {}
    return {"mlm_accuracy": correct / max(count, 1), "mlm_loss": loss / max(count, 1), **nsp, "sequences": len(rows)}


def evaluation_rows(model, b: dict) -> list[np.ndarray]:
    """Per sequence: (masked-LM hits, masked-LM loss sum, masked positions, next-sentence hit), float64."""
    mlm, nsp = model(b["input_ids"], b["segment_ids"], b["input_mask"], b["masked_lm_positions"])  # (B,P,V), (B,2)
    w = b["masked_lm_weights"].double()  # (B, P)
    ce = F.cross_entropy(mlm.flatten(0, 1).float(), b["masked_lm_ids"].flatten(), reduction="none")  # (B*P,)
    hits = (mlm.argmax(-1) == b["masked_lm_ids"]).double() * w  # (B, P)
    rows = torch.stack([hits.sum(1), (ce.double().view_as(w) * w).sum(1), w.sum(1),
                        (nsp.argmax(-1) == b["next_sentence_labels"]).double()], dim=1)  # (B, 4)
    return list(rows.cpu().numpy())
