"""Fine-tuning, scoring and predicting with a sequence classifier (or regressor) on examples already
read and checked: the run that `finetune glue` and `finetune classify` share. Writes, in
--output_dir:

- `ckpt-<step>/`: the fine-tuned model with its task record (task.json), what `bertkit predict` takes;
- `eval_results.json` and Google's `eval_results.txt` (each dev file; a second one, MNLI's
  mismatched, adds its scores with the suffix _mm); `eval_predictions.tsv` (`_mm.tsv`): index,
  gold label, prediction and each label's probability per example;
- `test_results.tsv` (`_mm.tsv`): Google's run_classifier.py output, the class probabilities of
  each test example (tab-separated, no header), or its value for regression; for GLUE the
  leaderboard's submission file (CoLA.tsv, MNLI-m.tsv, ...), otherwise `test_predictions.jsonl`
  (what `bertkit predict` writes);
- `train_results.json`: steps, seconds of training, the last logged losses.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field

import numpy as np
import torch

from bertkit.io import write_atomic, write_json
from bertkit.model import BertForSequenceClassification
from bertkit.task_record import TaskRecord
from bertkit.tasks.finetune import runner as ft
from bertkit.tasks.finetune.classification import (Example, classification_loss, collate, logit_rows, make_features,
                                                   prediction_objects, predictions, scores, write_eval_predictions,
                                                   write_google_eval_results, write_submission, write_test_results)
from bertkit.tasks.finetune.metrics import METRICS
from bertkit.train import StopFlag, infer


@dataclass
class Job:
    """What to fine-tune on and what to write. Dev and test examples are keyed by the suffix of
    their scores and files ("" for the first; MNLI's mismatched files "_mm")."""
    record: TaskRecord  # labels, problem, input columns; max_seq_length is the run's
    metric: str  # a key of metrics.METRICS
    train: list[Example] | None  # None: no training (--do_train=false)
    dev: dict[str, list[Example]]
    test: dict[str, list[Example]]
    files: dict[str, str]  # the input files, part of the run's identity (a resume must match)
    submissions: dict[str, str] = field(default_factory=dict)  # test suffix -> GLUE's file name (CoLA, MNLI-m)
    eval_every: int = 0


def fit_head(st: ft.Setup, record: TaskRecord, log=ft.say) -> None:
    """Leave out of the initial weights a classifier trained for other labels (an MNLI model
    starting RTE, say): this run's head starts fresh."""
    state = st.state
    if state is None or "classifier.weight" not in state:
        return
    init = st.init_task
    fits = state["classifier.weight"].shape[0] == record.num_outputs and (
        init is None or (init.labels, init.head) == (record.labels, record.head))
    if not fits:
        st.state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        trained = f"{init.task} ({', '.join(init.labels or ['regression'])})" if init else "another task"
        log(f"note: the classifier of --init_checkpoint was trained for {trained}; this run's "
            f"({', '.join(record.labels or ['regression'])}) starts fresh")


def run(job: Job, fs: ft.FinetuneSettings, stop: StopFlag) -> int:
    s = ft.setup(fs)
    d, fs = s.d, s.settings
    out = fs.run.output_dir
    record = dataclasses.replace(job.record, max_seq_length=fs.max_seq_length)
    fit_head(s, record)
    torch.manual_seed(fs.run.seed)  # the classifier's initialisation, the same on every rank
    model = ft.build(BertForSequenceClassification(s.config, num_labels=record.num_outputs), s)
    # Padding to a multiple of 8 suits GPU matrix units; on a CPU it is only extra work.
    batch = functools.partial(collate, pad_id=s.tokenizer.pad_id, pad_to_multiple_of=8 if d.device.type != "cpu" else None)

    def features(examples):
        return make_features(examples, s.tokenizer, fs.max_seq_length, record.labels)

    def logits_of(net, feats) -> np.ndarray:
        return np.stack(infer(net, feats, batch, logit_rows, fs.eval_batch_size, d, fs.run.precision))  # (N, K)

    dev = {suffix: features(exs) for suffix, exs in job.dev.items()}

    def dev_scores(net, suffix: str = "") -> tuple[np.ndarray, dict]:
        logits = logits_of(net, dev[suffix])
        return logits, scores(logits, [f.label for f in dev[suffix]], record.problem, job.metric)

    steps = 0
    if job.train is not None:
        train = features(job.train)
        eval_fn = (lambda m: dev_scores(m)[1]) if job.eval_every else None
        net, summary = ft.train(model, train, batch, classification_loss, len(train), s, ft.run_id(s, job.files),
                                stop, eval_fn, job.eval_every, task=record)
        steps = summary["steps"]
        if d.is_main:
            write_json(out / "train_results.json", summary)
    else:
        net = model.to(d.device)
    results = {}
    for suffix, examples in job.dev.items():
        logits, found = dev_scores(net, suffix)
        results.update({k + suffix: v for k, v in found.items()})
        if d.is_main:
            write_eval_predictions(out / f"eval_predictions{suffix}.tsv", examples, logits, record)
    if job.dev and d.is_main:
        write_json(out / "eval_results.json", results)
        keys = [k + suffix for suffix in job.dev for k in METRICS[job.metric]] + [f"loss{x}" for x in job.dev if x]
        write_google_eval_results(out / "eval_results.txt", results, steps, keys)
    for suffix, examples in job.test.items():
        logits = logits_of(net, features(examples))
        if not d.is_main:
            continue
        write_test_results(out / f"test_results{suffix}.tsv", logits, record)
        if suffix in job.submissions:
            write_submission(out / f"{job.submissions[suffix]}.tsv", [ex.guid for ex in examples],
                             predictions(logits, record))
        else:
            lines = [json.dumps(obj, ensure_ascii=False) for obj in prediction_objects(logits, record)]
            write_atomic(out / f"test_predictions{suffix}.jsonl", "".join(x + "\n" for x in lines).encode("utf-8"))
    if d.is_main:
        print(json.dumps(results))
    return 0
