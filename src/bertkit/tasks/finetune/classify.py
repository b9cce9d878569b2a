"""`bertkit finetune classify`: a sequence classifier (or regressor) on your own files: CSV, TSV or
JSON Lines (tables.py), one text column or a pair, a label column. The label set is read from the
training file and sorted (as strings; Hugging Face's run_glue.py sorts its labels so too), so the
same data always gives the same label indexes; it is kept with the model (task.json), with the
columns and the sequence length, for `bertkit predict`. The outputs are sequence_runner's.

    bertkit finetune classify --train_file train.csv --validation_file dev.csv --test_file test.csv \\
        --text_column review --init_checkpoint uncased_L-12_H-768_A-12 --output_dir out/reviews
"""

from __future__ import annotations

import json
import math

from bertkit import BertkitError
from bertkit.convert import read_task
from bertkit.flags import ArgumentParser, flag, parse_bool
from bertkit.task_record import TaskRecord
from bertkit.tasks.common import run_command
from bertkit.tasks.finetune import runner as ft
from bertkit.tasks.finetune import sequence_runner
from bertkit.tasks.finetune.classification import Example, check_labels
from bertkit.tasks.finetune.tables import FORMATS, Table, read_table

TEXT_COLUMNS = ("text", "sentence", "sentence1", "premise")  # the default text column: the first the file has
PAIRS = {"text": "text_pair", "sentence1": "sentence2", "premise": "hypothesis"}  # and its pair, when there


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="bertkit finetune classify", description=(
        "Fine-tune BERT to classify texts or text pairs (or score them: regression) from CSV, TSV or JSON "
        "Lines files."))
    flag(p, "train_file", default=None, help="Training examples (.csv, .tsv, .jsonl; see --file_format).")
    flag(p, "validation_file", default=None, help=(
        "Examples to score after training: eval_results.json, eval_results.txt, eval_predictions.tsv. "
        "Its labels must all occur in the training file."))
    flag(p, "test_file", default=None, help=(
        "Examples to label (a label column, if any, is ignored): test_predictions.jsonl and Google's test_results.tsv."))
    flag(p, "do_eval", type=parse_bool, default=None, help="Score --validation_file (default: when it is given).")
    flag(p, "do_predict", type=parse_bool, default=None, help="Label --test_file (default: when it is given).")
    flag(p, "file_format", choices=FORMATS[:3], default=None, help=(
        "csv (quoted fields), tsv (tab-separated, never quoted, as GLUE's files) or jsonl (one JSON object a "
        "line); default: from each file's extension (.csv, .tsv, .jsonl or .json). CSV and TSV files start "
        "with a header row."))
    flag(p, "text_column", default=None, help=(
        f"The text: a header name or JSON key. Default: the first of {', '.join(TEXT_COLUMNS)} that the training "
        "file has (or the fine-tuned --init_checkpoint's)."))
    flag(p, "text_pair_column", default=None, help=(
        "The second text of a pair. Default: text_pair beside text, sentence2 beside sentence1, hypothesis "
        "beside premise, when the file has it; 'none' for single texts."))
    flag(p, "label_column", default=None, help="The label (default: label).")
    flag(p, "task", choices=("auto", "classification", "regression"), default="auto", help=(
        "classification (a softmax over the training file's labels, sorted as strings) or regression (one "
        "output, mean squared error, float labels). auto (default): regression when every training label is "
        "a number and some are not whole (3.8), classification otherwise (0/1, 1-5 stars, names)."))
    flag(p, "eval_every", type=int, default=0, help=(
        "With --do_train and a validation file, also score it every N steps (into log.jsonl); 0: at the end only."))
    ft.add_flags(p, "classify", max_seq_length=128, task_name=False)
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    fs = ft.FinetuneSettings.from_args(args, "classify")
    do_eval = wanted(args.do_eval, args.validation_file, "--do_eval", "--validation_file")
    do_predict = wanted(args.do_predict, args.test_file, "--do_predict", "--test_file")
    if not (args.do_train or do_eval or do_predict):
        raise BertkitError("nothing to do: give --train_file, --validation_file or --test_file")
    if args.do_train and not args.train_file:
        raise BertkitError("--do_train needs --train_file (or --do_train=false to evaluate a fine-tuned --init_checkpoint)")
    if args.eval_every < 0 or (args.eval_every and not (args.do_train and do_eval)):
        raise BertkitError("--eval_every needs --do_train and --validation_file, and must be >= 0")
    job = read_job(args, fs.max_seq_length, do_eval, do_predict)  # bad files fail here, before any work
    return run_command(lambda stop: sequence_runner.run(job, fs, stop), fs.run.output_dir)


def wanted(given: bool | None, file: str | None, name: str, file_flag: str) -> bool:
    if given and not file:
        raise BertkitError(f"{name} needs {file_flag}")
    return bool(file) if given is None else given


def read_job(args, max_seq_length: int, do_eval: bool, do_predict: bool) -> sequence_runner.Job:
    """Every file the flags name, read and checked; the label set and problem from the training
    file, or without training from the fine-tuned --init_checkpoint's task record."""
    fmt = args.file_format
    train = read_table(args.train_file, fmt) if args.do_train else None
    if train is None:
        init = read_task(args.init_checkpoint) if args.init_checkpoint else None
        if init is None or init.head != "sequence_classification" or not init.text_column:
            raise BertkitError("--do_train=false needs an --init_checkpoint fine-tuned by bertkit for sequence "
                               "classification (a checkpoint with its task.json)")
        text = args.text_column or init.text_column
        pair = init.text_pair_column if args.text_pair_column is None else pick_pair_column(None, text, args.text_pair_column)
        label_column = args.label_column or init.label_column or "label"
        examples, problem, labels = None, init.problem, init.labels
    else:
        text = pick_text_column(train, args.text_column)
        pair = pick_pair_column(train, text, args.text_pair_column)
        label_column = args.label_column or "label"
        examples = read_examples(train, text, pair, label_column)
        problem = choose_problem(args.task, examples)
        examples = as_problem(examples, problem)
        labels = None if problem == "regression" else tuple(sorted({ex.label for ex in examples}))
    record = TaskRecord("classify", "sequence_classification", problem, labels, max_seq_length, text, pair, label_column)
    dev = {}
    if do_eval:
        dev_examples = as_problem(read_examples(read_table(args.validation_file, fmt), text, pair, label_column), problem)
        check_labels(dev_examples, labels, label_column, "the training labels" if train is not None else
                     "the labels of --init_checkpoint")
        dev[""] = dev_examples
    test = {"": read_examples(read_table(args.test_file, fmt), text, pair, None)} if do_predict else {}
    metric = "accuracy_macro_f1" if problem == "classification" else "correlation"
    return sequence_runner.Job(record, metric, examples, dev, test, {"train_file": str(args.train_file)},
                               eval_every=args.eval_every)


def pick_text_column(table: Table, given: str | None) -> str:
    if given:
        return given
    for name in TEXT_COLUMNS:
        if name in table.columns:
            return name
    raise BertkitError(f"{table.path}:1: none of the default text columns ({', '.join(TEXT_COLUMNS)}) is there "
                       f"(columns: {', '.join(map(str, table.columns))}); name one with --text_column")


def pick_pair_column(table: Table | None, text: str, given: str | None) -> str | None:
    if given is not None:
        return None if given == "none" else given
    pair = PAIRS.get(text)
    return pair if pair in table.columns else None


def read_examples(table: Table, text: str, pair: str | None, label: str | None) -> list[Example]:
    """The examples of a table; labels as the file holds them (a JSON value becomes its JSON text:
    1, true), or None when `label` is None."""
    table.check_columns(text, pair, label)
    out = []
    for i, r in enumerate(table.records):
        value = None
        if label is not None:
            value = table.value(r, label)
            if value is None:
                raise BertkitError(f"{table.path}:{r.line}: column {label!r}: no label (null)")
            if isinstance(value, (dict, list)):
                raise BertkitError(f"{table.path}:{r.line}: column {label!r}: a label must be a string or number")
            value = value.strip() if isinstance(value, str) else value if isinstance(value, float) else json.dumps(value)
        out.append(Example(str(i), table.text(r, text), table.text(r, pair) if pair else None, value,
                           f"{table.path}:{r.line}"))
    return out


def number(value) -> float | None:
    """A label as a finite number, or None when it is not one."""
    if isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def choose_problem(task: str, examples: list[Example]) -> str:
    if task != "auto":
        return task
    values = [number(ex.label) for ex in examples]
    regression = all(v is not None for v in values) and any(v != int(v) for v in values)
    return "regression" if regression else "classification"


def as_problem(examples: list[Example], problem: str) -> list[Example]:
    """Labels as regression values (floats; anything else one error naming its line) or as names."""
    for ex in examples:
        if problem == "regression":
            value = number(ex.label)
            if value is None:
                raise BertkitError(f"{ex.where}: label {ex.label!r} is not a finite number (--task regression)")
            ex.label = value
        else:
            ex.label = ex.label if isinstance(ex.label, str) else json.dumps(ex.label)
    return examples
