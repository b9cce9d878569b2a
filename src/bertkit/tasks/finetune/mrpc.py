"""`bertkit finetune mrpc`: paraphrase classification on MRPC with the seed's run_classifier.py
flags. Reads GLUE's train/dev/test.tsv or Microsoft's msr_paraphrase_*.txt from --data_dir (and
fetches them when the folder has none). Writes, in --output_dir:

- `ckpt-<step>/`: the fine-tuned model (a bertkit checkpoint with its classifier);
- `eval_results.txt` (--do_eval): the same as Google's run_classifier.py writes it (`key = value`
  lines: eval_accuracy, eval_loss, global_step, loss), for scripts written for the seed;
- `eval_results.json` (--do_eval, on the dev split): accuracy, f1, precision, recall (of the
  paraphrase class), loss (mean cross-entropy), examples;
- `eval_predictions.tsv`: index, predicted label and probability of a paraphrase for each dev pair;
- `MRPC.tsv` (--do_predict, on the test split): GLUE's submission format, `index<TAB>prediction`;
- `train_results.json`: steps, seconds of training, the last logged losses.

    bertkit finetune mrpc --data_dir glue/MRPC --init_checkpoint uncased_L-12_H-768_A-12 \\
        --output_dir out/mrpc --do_eval --learning_rate 2e-5
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch

from bertkit import BertkitError
from bertkit.flags import ArgumentParser, flag, parse_bool
from bertkit.io import write_atomic, write_json
from bertkit.model import BertForSequenceClassification
from bertkit.task_record import TaskRecord
from bertkit.tasks.finetune import mrpc_data as mrpc
from bertkit.tasks.finetune import runner as ft
from bertkit.tasks.finetune.classification import (classification_loss, cross_entropy, logit_rows,
                                                   write_google_eval_results)
from bertkit.tasks.common import run_command
from bertkit.train import StopFlag, infer


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="bertkit finetune mrpc", description=(
        "Fine-tune BERT on MRPC (paraphrase or not). Flags take the seed's run_classifier.py names, "
        "in snake_case or kebab-case."))
    flag(p, "data_dir", required=True, help=(
        "Folder with GLUE's train.tsv/dev.tsv/test.tsv (or Microsoft's msr_paraphrase_*.txt), also "
        "looked for in its MRPC/ and glue/ subfolders; fetched into it when absent."))
    flag(p, "do_eval", type=parse_bool, default=False, help="Score the dev split: eval_results.json.")
    flag(p, "do_predict", type=parse_bool, default=False, help="Label the test split: MRPC.tsv in GLUE's format.")
    flag(p, "eval_every", type=int, default=0, help=(
        "With --do_train and --do_eval, also score the dev split every N steps (into log.jsonl); 0: at the end only."))
    ft.add_flags(p, "mrpc", max_seq_length=128)
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    fs = ft.FinetuneSettings.from_args(args, "MRPC")
    if not (args.do_train or args.do_eval or args.do_predict):
        raise BertkitError("nothing to do: give --do_train, --do_eval or --do_predict")
    if args.eval_every < 0 or (args.eval_every and not (args.do_train and args.do_eval)):
        raise BertkitError("--eval_every needs --do_train and --do_eval, and must be >= 0")
    return run_command(lambda stop: run(args, fs, stop), fs.run.output_dir)


def scores(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy, F1 (and precision, recall) of the paraphrase class, mean cross-entropy."""
    result = mrpc.metrics(logits.argmax(-1).tolist(), labels.tolist())
    return {**result, "loss": cross_entropy(logits, labels), "examples": len(labels)}


def run(args, fs: ft.FinetuneSettings, stop: StopFlag) -> int:
    """The MRPC command's work: `args` for its own flags (data, splits), `fs` for the shared ones."""
    files = mrpc.find_mrpc(args.data_dir)  # fetched when absent (offline: one clear error)
    needed = [split for split, flag_ in (("train", args.do_train), ("dev", args.do_eval),
                                         ("test", args.do_predict)) if flag_]
    for split in needed:
        if split not in files:
            raise BertkitError(f"{args.data_dir}: no {split} file ({mrpc.GLUE_FILES[split]})")
    examples = {split: mrpc.read_mrpc(files[split]) for split in needed}  # bad rows fail here, early
    for split in ("train", "dev"):
        if split in examples and any(ex.label is None for ex in examples[split]):
            raise BertkitError(f"{files[split]}: the {split} split needs labels (a Quality column)")

    s = ft.setup(fs)
    d, fs = s.d, s.settings
    out = fs.run.output_dir
    torch.manual_seed(fs.run.seed)  # the classifier's initialisation, the same on every rank
    model = ft.build(BertForSequenceClassification(s.config, num_labels=2), s)
    # Padding to a multiple of 8 suits GPU matrix units; on a CPU it is only extra work.
    multiple = 8 if d.device.type != "cpu" else None
    collate = functools.partial(mrpc.collate, pad_id=s.tokenizer.pad_id, pad_to_multiple_of=multiple)
    features = {split: mrpc.make_features(exs, s.tokenizer, fs.max_seq_length) for split, exs in examples.items()}

    labels = np.array([ex.label for ex in examples["dev"]]) if args.do_eval else None

    def dev_scores(net) -> tuple[np.ndarray, dict]:
        logits = np.stack(infer(net, features["dev"], collate, logit_rows, fs.eval_batch_size, d,
                                fs.run.precision))  # (N, 2)
        return logits, scores(logits, labels)

    net = model
    if args.do_train:
        run_id = ft.run_id(s, {"train_file": files["train"]})
        eval_fn = (lambda m: dev_scores(m)[1]) if args.eval_every else None
        task = TaskRecord("mrpc", "sequence_classification", labels=("0", "1"), max_seq_length=fs.max_seq_length,
                          text_column="#1 String", text_pair_column="#2 String", label_column="Quality")
        net, summary = ft.train(model, features["train"], collate, classification_loss, len(features["train"]),
                                s, run_id, stop, eval_fn, args.eval_every, task=task)
        if d.is_main:
            write_json(out / "train_results.json", summary)
    else:
        net = model.to(d.device)
    results = {}
    if args.do_eval:
        logits, results = dev_scores(net)
        if d.is_main:
            out.mkdir(parents=True, exist_ok=True)
            write_eval_predictions(out / "eval_predictions.tsv", examples["dev"], logits)
            write_json(out / "eval_results.json", results)
            # Google's four keys: eval_accuracy, eval_loss, global_step, loss
            write_google_eval_results(out / "eval_results.txt", results, summary["steps"] if args.do_train else 0)
    if args.do_predict:
        logits = np.stack(infer(net, features["test"], collate, logit_rows, fs.eval_batch_size, d,
                                fs.run.precision))
        if d.is_main:
            out.mkdir(parents=True, exist_ok=True)
            mrpc.write_predictions(out / "MRPC.tsv", examples["test"], logits.argmax(-1).tolist())
    if d.is_main:
        print(json.dumps(results))
    return 0


def write_eval_predictions(path: Path, examples, logits: np.ndarray) -> None:
    """index, prediction and probability of a paraphrase (repr precision) per dev pair."""
    p1 = 1.0 / (1.0 + np.exp(logits[:, 0].astype(np.float64) - logits[:, 1]))  # (N,) softmax of class 1
    lines = ["index\tprediction\tprobability"]
    lines += [f"{ex.guid}\t{int(l.argmax())}\t{float(p)!r}" for ex, l, p in zip(examples, logits, p1)]
    write_atomic(path, ("\n".join(lines) + "\n").encode())
