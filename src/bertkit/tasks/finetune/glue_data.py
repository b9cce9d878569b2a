"""GLUE's tasks and their files, read as GLUE's download_glue_data.py writes them: tab-separated,
never quoted (Google's run_classifier.py reads them with csv and quotechar None), a header row
except in CoLA's train.tsv and dev.tsv. Columns are found by their header names, which pick the
same columns as the positions in Google's processors and Hugging Face's glue processors:

| task  | text, pair                | label           | labels (index order)                | test id |
| ----- | ------------------------- | --------------- | ----------------------------------- | ------- |
| CoLA  | sentence (col 3 if no header) | label (col 1) | 0, 1                              | index   |
| SST-2 | sentence                  | label           | 0, 1                                | index   |
| MRPC  | #1 String, #2 String      | Quality         | 0, 1                                | index   |
| STS-B | sentence1, sentence2      | score           | regression, 0-5                     | index   |
| QQP   | question1, question2      | is_duplicate    | 0, 1                                | id      |
| MNLI  | sentence1, sentence2      | gold_label      | contradiction, entailment, neutral  | index   |
| QNLI  | question, sentence        | label           | entailment, not_entailment          | index   |
| RTE   | sentence1, sentence2      | label           | entailment, not_entailment          | index   |
| WNLI  | sentence1, sentence2      | label           | 0, 1                                | index   |

MNLI has dev_matched/dev_mismatched and test_matched/test_mismatched in place of dev and test.
XNLI is read as Google's XnliProcessor reads it: training pairs from
multinli/multinli.train.{lang}.tsv (premise, hypo, label; "contradictory" is "contradiction"), dev
pairs from xnli.dev.tsv (its rows of that language); test pairs, which Google's processor does not
read, from xnli.test.tsv in the dev layout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bertkit import BertkitError
from bertkit.task_record import TaskRecord
from bertkit.tasks.finetune.classification import Example, check_labels
from bertkit.tasks.finetune.tables import Table, read_table

NLI = ("contradiction", "entailment", "neutral")
BINARY = ("0", "1")


@dataclass(frozen=True)
class GlueTask:
    name: str  # bertkit's name: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli, xnli
    folder: str  # GLUE's folder name, also Google's --task_name spelling: CoLA, SST-2, ...
    labels: tuple[str, ...] | None  # index order, as Google's and Hugging Face's processors list them; None: regression
    metric: str  # a key of metrics.METRICS: what GLUE scores the task by
    text: str  # column names as GLUE's headers spell them
    pair: str | None
    label: str
    index: str = "index"  # the test files' id column
    no_header: tuple[str, ...] | None = None  # the columns of train/dev files without a header row
    dev: tuple[str, ...] = ("dev",)  # file stems, the one scored first
    test: tuple[str, ...] = ("test",)
    submissions: tuple[str, ...] = ()  # GLUE's leaderboard file for each test file

    @property
    def problem(self) -> str:
        return "regression" if self.labels is None else "classification"

    def record(self, max_seq_length: int, language: str | None = None) -> TaskRecord:
        return TaskRecord(self.name, "sequence_classification", self.problem, self.labels, max_seq_length,
                          self.text, self.pair, self.label, {"xnli_language": language} if language else {})


TASKS = {t.name: t for t in (
    GlueTask("cola", "CoLA", BINARY, "matthews", "sentence", None, "label",
             no_header=("source", "label", "original_label", "sentence"), submissions=("CoLA",)),
    GlueTask("sst2", "SST-2", BINARY, "accuracy", "sentence", None, "label", submissions=("SST-2",)),
    GlueTask("mrpc", "MRPC", BINARY, "accuracy_f1", "#1 String", "#2 String", "Quality", submissions=("MRPC",)),
    GlueTask("stsb", "STS-B", None, "correlation", "sentence1", "sentence2", "score", submissions=("STS-B",)),
    GlueTask("qqp", "QQP", BINARY, "accuracy_f1", "question1", "question2", "is_duplicate", index="id",
             submissions=("QQP",)),
    GlueTask("mnli", "MNLI", NLI, "accuracy", "sentence1", "sentence2", "gold_label",
             dev=("dev_matched", "dev_mismatched"), test=("test_matched", "test_mismatched"),
             submissions=("MNLI-m", "MNLI-mm")),
    GlueTask("qnli", "QNLI", ("entailment", "not_entailment"), "accuracy", "question", "sentence", "label",
             submissions=("QNLI",)),
    GlueTask("rte", "RTE", ("entailment", "not_entailment"), "accuracy", "sentence1", "sentence2", "label",
             submissions=("RTE",)),
    GlueTask("wnli", "WNLI", BINARY, "accuracy", "sentence1", "sentence2", "label", submissions=("WNLI",)),
    GlueTask("xnli", "XNLI", NLI, "accuracy", "sentence1", "sentence2", "gold_label"),
)}
# What a second dev or test file's scores and files are suffixed with (Hugging Face's run_glue.py
# names MNLI's mismatched scores so: eval_accuracy_mm).
SUFFIX = {"dev_mismatched": "_mm", "test_mismatched": "_mm"}


def find_task(name: str) -> GlueTask:
    """A task by any of its spellings: cola, CoLA, SST-2, sst2, STS-B, stsb, ..."""
    task = TASKS.get(name.lower().replace("-", "").replace("_", ""))
    if task is None:
        raise BertkitError(f"--task_name {name}: not a GLUE task; choose from "
                           f"{', '.join(t.folder for t in TASKS.values())}")
    return task


def task_folder(task: GlueTask, data_dir: str | os.PathLike) -> Path:
    """--data_dir itself, or its subfolder named as GLUE names the task (glue_data/ for glue_data/CoLA/)."""
    data_dir = Path(data_dir)
    inside = data_dir / task.folder
    own = data_dir / ("xnli.dev.tsv" if task.name == "xnli" else "train.tsv")
    return inside if not own.exists() and inside.is_dir() else data_dir


def split_files(task: GlueTask, split: str, language: str = "zh") -> dict[str, str]:
    """The files of a split (train, dev or test) in the task's folder, by the suffix of their
    scores ("" or "_mm")."""
    if task.name == "xnli":
        name = {"train": f"multinli/multinli.train.{language}.tsv", "dev": "xnli.dev.tsv", "test": "xnli.test.tsv"}
        return {"": name[split]}
    stems = {"train": ("train",), "dev": task.dev, "test": task.test}[split]
    return {SUFFIX.get(stem, ""): f"{stem}.tsv" for stem in stems}


def read_split(task: GlueTask, path: Path, split: str, language: str = "zh") -> list[Example]:
    """The examples of one GLUE file, labels checked against the task's (a test file's labels,
    where it has any, are left out)."""
    if not path.is_file():
        names = [n for s in ("train", "dev", "test") for n in split_files(task, s, language).values()]
        raise BertkitError(f"{path}: no such file (GLUE's {task.folder} folder holds {', '.join(names)})")
    if task.name == "xnli":
        return read_xnli(path, split, language)
    test = split == "test"
    table = read_table(path, "tsv", None if test else task.no_header)
    table.check_columns(task.text, task.pair, task.index if test else task.label)
    examples = [Example(str(table.value(r, task.index)) if task.index in r.fields else str(i),
                        table.text(r, task.text), table.text(r, task.pair) if task.pair else None,
                        None if test else label_value(table, r, task.label, task.labels is None),
                        f"{path}:{r.line}") for i, r in enumerate(table.records)]
    check_labels(examples, task.labels, task.label, f"{task.folder}'s labels")
    return examples


def label_value(table: Table, record, column: str, regression: bool) -> str | float:
    text = table.text(record, column).strip()
    if not regression:
        return text
    try:
        return float(text)
    except ValueError:
        raise BertkitError(f"{table.path}:{record.line}: column {column!r}: {text!r} is not a number") from None


def read_xnli(path: Path, split: str, language: str) -> list[Example]:
    """Google's XnliProcessor: multinli.train.{lang}.tsv (premise, hypo, label) for training,
    xnli.dev.tsv/xnli.test.tsv rows whose language column is `language` (sentence1, sentence2,
    gold_label) for the others."""
    table = read_table(path, "tsv")
    if split == "train":
        table.check_columns("premise", "hypo", "label")
        examples = []
        for i, r in enumerate(table.records):
            label = table.text(r, "label").strip()
            examples.append(Example(str(i), table.text(r, "premise"), table.text(r, "hypo"),
                                    "contradiction" if label == "contradictory" else label, f"{path}:{r.line}"))
        column = "label"
    else:
        table.check_columns("language", "sentence1", "sentence2", "gold_label")
        examples = [Example(str(i), table.text(r, "sentence1"), table.text(r, "sentence2"),
                            table.text(r, "gold_label").strip(), f"{path}:{r.line}")
                    for i, r in enumerate(x for x in table.records if table.text(x, "language") == language)]
        if not examples:
            raise BertkitError(f"{path}: no rows of language {language!r} (--xnli_language)")
        column = "gold_label"
    check_labels(examples, NLI, column, "XNLI's labels")
    return examples
