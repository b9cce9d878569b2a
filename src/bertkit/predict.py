"""`bertkit predict --model DIR --input FILE [--output FILE]`: a fine-tuned model applied to new
text. DIR is a checkpoint folder or a training output folder (its newest valid checkpoint); its
task record (task.json) says which columns to read, the labels and the sequence length, and
bertkit.json the casing, so no other flag is needed. The input is a CSV, TSV or JSON Lines file
(the columns the model was trained on) or plain text, one example a line (a pair as two
tab-separated texts). Examples run in batches through the same unpadded path as evaluation
(`train.infer` and the task's collate). The output is JSON Lines, one object per input:

    {"line": 2, "label": "entailment", "probability": 0.93, "probabilities": {"entailment": 0.93, "not_entailment": 0.07}}
    {"line": 2, "value": 3.81}                                              (regression)

`line` is the input's line number. A tagger (finetune ner) reads CoNLL files, JSON Lines of
"tokens" or plain text, and writes one object per sentence: its words, their tags and the entities
with their spans and scores (tasks/finetune/ner_predict.py). Under torchrun the batches are spread
over the processes.

    bertkit predict --model out/rte --input glue_data/RTE/test.tsv --output rte.jsonl
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from bertkit import BertkitError
from bertkit.checkpoint import is_model_folder, load_model_folder, load_task, load_weights, resolve_checkpoint
from bertkit.distributed import Dist, init, shutdown
from bertkit.flags import PRECISIONS, ArgumentParser, flag, parse_bool
from bertkit.io import write_atomic
from bertkit.model import BertForSequenceClassification
from bertkit.task_record import TaskRecord
from bertkit.tasks.finetune import ner_predict
from bertkit.tasks.finetune.classification import Example, collate, logit_rows, make_features, prediction_objects
from bertkit.tasks.finetune.tables import FORMATS, Table, file_format, read_lines, read_table
from bertkit.tokenizer import WordPiece
from bertkit.train import infer


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="bertkit predict", description=(
        "Label new text with a model fine-tuned by bertkit (finetune glue, classify, mrpc, ner); JSON Lines out."))
    flag(p, "model", "-m", required=True, help=(
        "A fine-tuned checkpoint folder (ckpt-N) or a training output folder (its newest checkpoint)."))
    flag(p, "input", "-i", required=True, help=(
        "The texts: .csv, .tsv, .jsonl/.json (the model's text columns) or .txt (one per line; a pair as two "
        "tab-separated texts); for a tagger, CoNLL, JSON Lines of \"tokens\" or plain text."))
    flag(p, "output", "-o", default=None, help="Where the JSON Lines go (default: standard output).")
    flag(p, "file_format", choices=(*FORMATS, "conll"), default=None, help=(
        "csv, tsv, jsonl or txt (default: from the extension); a tagger (finetune ner) reads conll, jsonl "
        "(a \"tokens\" list per line) or txt (one sentence a line), its default told from the file."))
    flag(p, "text_column", default=None, help=(
        "Read the text from this column (default: the model's, as trained). Not for a tagger (a warning)."))
    flag(p, "text_pair_column", default=None, help=(
        "Read the second text from this column (default: the model's). Not for a tagger (a warning)."))
    flag(p, "batch_size", type=int, default=64, help="Examples per batch (per process).")
    flag(p, "device", default="auto", help="auto (this process's GPU if any, else CPU), cpu, cuda, cuda:N.")
    flag(p, "precision", choices=PRECISIONS, default="fp32", help="fp32, or bf16/fp16 autocast.")
    flag(p, "overwrite", type=parse_bool, default=False, help="Replace --output if it exists.")
    return p


def find_model(path: str) -> Path:
    """A model folder, or the newest valid checkpoint of a training output folder."""
    p = resolve_checkpoint(path)
    if not is_model_folder(p):
        raise BertkitError(f"{p}: not a bertkit checkpoint folder, nor a training output folder with one")
    return p


def read_input(path: str, fmt: str | None, record: TaskRecord, text: str | None, pair: str | None
               ) -> tuple[Table, str, str | None]:
    """The input's table and the columns to read: the model's unless given; plain text has its own."""
    text, pair = text or record.text_column, pair or record.text_pair_column
    if file_format(path, fmt) == "txt":
        return read_lines(path, pair is not None), "text", "text_pair" if pair is not None else None
    if text is None:
        raise BertkitError(f"{path}: the model records no text column; give --text_column")
    table = read_table(path, fmt)
    table.check_columns(text, pair)
    return table, text, pair


def sequence_predictions(record: TaskRecord, table: Table, text: str, pair: str | None, folder: Path,
                         tokenizer: WordPiece, d: Dist, batch_size: int, precision: str) -> list[dict]:
    """One object per record: the label and probabilities (or the value) of a sequence classifier."""
    examples = [Example(str(r.line), table.text(r, text), table.text(r, pair) if pair else None, None)
                for r in table.records]
    config, state, _, _ = load_model_folder(folder)
    model = BertForSequenceClassification(config, num_labels=record.num_outputs)
    fresh = load_weights(model, state, str(folder))
    if any(k.startswith("classifier.") for k in fresh):
        raise BertkitError(f"{folder}: no trained classifier in the weights")
    features = make_features(examples, tokenizer, record.max_seq_length, record.labels)
    batch = functools.partial(collate, pad_id=tokenizer.pad_id, pad_to_multiple_of=8 if d.device.type != "cpu" else None)
    with tqdm(total=len(features), desc="predict", unit="ex", disable=None if d.is_main else True,
              file=sys.stderr) as bar:
        logits = np.stack(infer(model.to(d.device), features, batch, logit_rows, batch_size, d, precision,
                                progress=bar.update))  # (N, K)
    return [{"line": r.line, **obj} for r, obj in zip(table.records, prediction_objects(logits, record))]


def read_sequences(args, record: TaskRecord) -> tuple[Table, str, str | None]:
    return read_input(args.input, args.file_format, record, args.text_column, args.text_pair_column)


def read_sentences(args, record: TaskRecord) -> ner_predict.TaggingInput:
    if args.text_column or args.text_pair_column:
        print("warning: --text_column and --text_pair_column do not apply to a tagger: it reads words", file=sys.stderr)
    return ner_predict.read_input(args.input, args.file_format)


# What each kind of head reads and predicts: head -> (read(args, record) -> its input, read and
# checked before any work; predict(record, input, folder, tokenizer, d, batch_size, precision) ->
# one JSON object per example).
HEADS: dict[str, tuple[Callable, Callable[..., list[dict]]]] = {
    "sequence_classification": (read_sequences, lambda record, data, *rest: sequence_predictions(record, *data, *rest)),
    "token_classification": (read_sentences, ner_predict.predict),
}


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.batch_size < 1:
        raise BertkitError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.output and Path(args.output).exists() and not args.overwrite:
        raise BertkitError(f"{args.output}: already exists (pass --overwrite to replace it)")
    folder = find_model(args.model)
    record = load_task(folder)
    if record is None:
        raise BertkitError(f"{folder}: no task.json: not a model fine-tuned by bertkit (or one fine-tuned before "
                           "bertkit recorded tasks); fine-tune it again, or evaluate it with its finetune command")
    if record.head not in HEADS:
        raise BertkitError(f"{folder}: a {record.head} head, which bertkit predict does not apply "
                           f"(it applies {', '.join(HEADS)})")
    read, predict = HEADS[record.head]
    data = read(args, record)
    meta = json.loads((folder / "bertkit.json").read_text())
    tokenizer = WordPiece(folder / "vocab.txt", lowercase=bool(meta.get("do_lower_case", True)))
    d = init(args.device)
    try:
        objects = predict(record, data, folder, tokenizer, d, args.batch_size, args.precision)
    finally:
        shutdown()
    if d.is_main:
        lines = "".join(json.dumps(obj, ensure_ascii=False) + "\n" for obj in objects)
        if args.output:
            write_atomic(args.output, lines.encode("utf-8"))
            print(f"wrote {len(objects)} predictions to {args.output}", file=sys.stderr)
        else:
            sys.stdout.write(lines)
    return 0
