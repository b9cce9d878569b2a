"""`bertkit finetune ner`: named-entity tagging on CoNLL files (CoNLL-2003's `word POS chunk tag`
lines) or JSON Lines of `{"tokens": [...], "tags": [...]}` (ner_data.py has the formats). Each word
is tagged at its first WordPiece; its other pieces are left out of the loss. The label set is the
sorted set of the training file's tags, kept in the model's task record (task.json) with the tag
scheme, max_seq_length and the reading settings. Writes, in --output_dir:

- `ckpt-<step>/`: the fine-tuned tagger (a bertkit checkpoint with its classifier and task.json);
- `eval_results.json` (--validation_file): entity precision, recall and F1 (micro, conlleval's
  counting, ner_metric.py), token accuracy, loss (mean cross-entropy per word), and per entity
  type precision, recall, F1, support; `eval_results.txt`: the same as `key = value` lines, as
  Google's run_classifier.py writes its results;
- `eval_predictions.txt`: `word gold predicted` per line, a blank line between sentences (what
  conlleval reads);
- `test_predictions.txt` (--test_file): the same for the test file (`word predicted` when it has no
  tags), and `test_results.json` when it has tags;
- `train_results.json`: steps, seconds of training, the last logged losses.

    bertkit finetune ner --train_file conll2003/train.txt --validation_file conll2003/valid.txt \\
        --init_checkpoint uncased_L-12_H-768_A-12 --output_dir out/ner
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bertkit import BertkitError
from bertkit.convert import read_task
from bertkit.flags import ArgumentParser, flag, parse_bool
from bertkit.io import write_atomic, write_json
from bertkit.model import BertForTokenClassification
from bertkit.task_record import TaskRecord
from bertkit.tasks.common import run_command
from bertkit.tasks.finetune import ner_data as nd
from bertkit.tasks.finetune import runner as ft
from bertkit.tasks.finetune.ner_metric import SCHEMES, score
from bertkit.train import StopFlag, infer


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="bertkit finetune ner", description=(
        "Fine-tune BERT to tag named entities (CoNLL-2003 style). Flags take the seed's run_classifier.py "
        "names where it has them, in snake_case or kebab-case."))
    flag(p, "train_file", default=None, help="Tagged sentences to train on (CoNLL or JSON Lines); needed by --do_train.")
    flag(p, "validation_file", default=None, help=(
        "Tagged sentences to score: eval_results.json, eval_results.txt, eval_predictions.txt. Its tags must "
        "all appear in the training file (or the model's labels)."))
    flag(p, "test_file", default=None, help=(
        "Sentences to tag (--do_predict): test_predictions.txt, and test_results.json when they have tags."))
    flag(p, "do_eval", type=parse_bool, default=None, help="Score --validation_file (default: when it is given).")
    flag(p, "do_predict", type=parse_bool, default=None, help="Tag --test_file (default: when it is given).")
    flag(p, "file_format", choices=("auto", *nd.FORMATS), default="auto", help=(
        "conll (one word per line, fields split by spaces, blank line between sentences) or jsonl "
        "({\"tokens\": [...], \"tags\": [...]} per line); auto: jsonl for .jsonl, .json and .ndjson files, else conll."))
    flag(p, "tag_column", type=int, default=None, help="CoNLL files: the field holding the tag, counted from 1 (default: the last).")
    flag(p, "tag_scheme", choices=("auto", *SCHEMES), default="auto", help=(
        "IOB1 (CoNLL-2003's files: B- only between two chunks of the same type) or IOB2 (B- starts every "
        "chunk); auto: read from the training file. Entities are counted the same way in both (conlleval's "
        "rules); the scheme is checked (tags that do not fit are counted in a warning) and kept with the model."))
    flag(p, "eval_every", type=int, default=0, help=(
        "With --do_train and --validation_file, also score it every N steps (into log.jsonl); 0: at the end only."))
    ft.add_flags(p, "ner", max_seq_length=128)
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    fs = ft.FinetuneSettings.from_args(args, "NER")
    args.do_eval = bool(args.validation_file) if args.do_eval is None else args.do_eval
    args.do_predict = bool(args.test_file) if args.do_predict is None else args.do_predict
    if not (args.do_train or args.do_eval or args.do_predict):
        raise BertkitError("nothing to do: give --do_train, --validation_file or --test_file")
    for needed, name, given in (("--do_train", "train_file", args.do_train), ("--do_eval", "validation_file", args.do_eval),
                                ("--do_predict", "test_file", args.do_predict)):
        if given and not getattr(args, name):
            raise BertkitError(f"{needed} needs --{name}" + (" (or pass --do_train=false)" if name == "train_file" else ""))
    if args.tag_column is not None and args.tag_column < 2:
        raise BertkitError(f"--tag_column must be >= 2 (field 1 is the word), got {args.tag_column}")
    if args.eval_every < 0 or (args.eval_every and not (args.do_train and args.do_eval)):
        raise BertkitError("--eval_every needs --do_train and --validation_file, and must be >= 0")
    return run_command(lambda stop: run(args, fs, stop), fs.run.output_dir)


def tagging_loss(model, b: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean cross-entropy over the words of the batch, at their first pieces."""
    first = b["first"]  # (B, T) bool
    logits = model(b["input_ids"], b["token_type_ids"], b["attention_mask"], select=first)  # (M, L)
    labels = b["labels"][first]  # (M,)
    loss = F.cross_entropy(logits.float(), labels, ignore_index=nd.IGNORE)
    with torch.no_grad():
        acc = (logits.argmax(-1) == labels).float().mean()
    return loss, {"accuracy": acc}


def word_log_probs(model, b: dict) -> list[np.ndarray]:
    """Each window's log-probabilities of every label at each of its words: (words_i, L)."""
    first = b["first"]  # (B, T) bool
    logits = model(b["input_ids"], b["token_type_ids"], b["attention_mask"], select=first)  # (M, L)
    logp = logits.float().log_softmax(-1).cpu().numpy()  # (M, L)
    return np.split(logp, np.cumsum(first.sum(1).tolist())[:-1])


def tag_sentences(net, sentences, tokenizer, labels, max_seq_length: int, collate, batch_size: int, d,
                  precision: str, progress=None) -> list[np.ndarray]:
    """Per sentence, the log-probabilities of each label at each word (words, L), every word
    predicted (long sentences in windows: ner_data.py). `progress(n)` hears of each n windows done."""
    features, _ = nd.make_features(sentences, tokenizer, max_seq_length, {t: i for i, t in enumerate(labels)})
    rows = infer(net, features, collate, word_log_probs, batch_size, d, precision, progress=progress)
    return [np.stack(r) for r in nd.join_windows(features, rows, len(sentences))]  # (words, L) each


def scores(sentences, logp: list[np.ndarray], labels) -> tuple[list[list[str]], dict]:
    """The predicted tags of each sentence and their scores against the gold tags (ner_metric.score,
    and the mean cross-entropy per word)."""
    index = {t: i for i, t in enumerate(labels)}
    predicted = [[labels[i] for i in lp.argmax(-1)] for lp in logp]
    result = score([s.tags for s in sentences], predicted)
    nll = np.concatenate([-lp[np.arange(len(lp)), [index[t] for t in s.tags]] for s, lp in zip(sentences, logp)])
    return predicted, {**{k: v for k, v in result.items() if k != "per_type"}, "loss": float(nll.mean()),
                       "sentences": len(sentences), "per_type": result["per_type"]}


def run(args, fs: ft.FinetuneSettings, stop: StopFlag) -> int:
    """The NER command's work: `args` for its own flags (files, formats), `fs` for the shared ones."""
    data = {}  # every file is read and checked before anything is written
    for what, path, wanted in (("train", args.train_file, args.do_train), ("eval", args.validation_file, args.do_eval),
                               ("test", args.test_file, args.do_predict)):
        if wanted:
            data[what] = nd.read_tagged(path, args.file_format, args.tag_column, labelled=what != "test")
    scheme = nd.tag_scheme(data["train"], args.train_file, args.tag_scheme, ft.say) if args.do_train else None
    labels = sorted({t for s in data["train"] for t in s.tags}) if args.do_train else None
    init = fs.model.init_checkpoint
    labels, scheme = model_labels(read_task(init) if init else None, labels, scheme, init)
    for what, path in (("eval", args.validation_file), ("test", args.test_file)):
        if what in data:
            nd.check_tags(data[what], labels, path)
            if data[what][0].tags is not None and args.tag_scheme != "auto":
                nd.tag_scheme(data[what], path, args.tag_scheme, ft.say)

    s = ft.setup(fs)
    d, fs = s.d, s.settings
    out = fs.run.output_dir
    torch.manual_seed(fs.run.seed)  # the classifier's initialisation, the same on every rank
    model = ft.build(BertForTokenClassification(s.config, num_labels=len(labels)), s)
    multiple = 8 if d.device.type != "cpu" else None  # see tasks/mrpc.py
    collate = functools.partial(nd.collate, pad_id=s.tokenizer.pad_id, pad_to_multiple_of=multiple)
    tag = functools.partial(tag_sentences, tokenizer=s.tokenizer, labels=labels, max_seq_length=fs.max_seq_length,
                            collate=collate, batch_size=fs.eval_batch_size, d=d, precision=fs.run.precision)

    net, summary = model, {"steps": 0}
    if args.do_train:
        features, cut = nd.make_features(data["train"], s.tokenizer, fs.max_seq_length,
                                         {t: i for i, t in enumerate(labels)})
        if cut:
            ft.say(f"{args.train_file}: {cut} sentence(s) longer than --max_seq_length {fs.max_seq_length} pieces "
                   "were cut into windows of whole words")
        task = TaskRecord("ner", "token_classification", labels=tuple(labels), max_seq_length=fs.max_seq_length,
                          extra={"tag_scheme": scheme, "tag_column": args.tag_column})
        run_id = ft.run_id(s, {"train_file": args.train_file, "file_format": args.file_format,
                               "tag_column": args.tag_column, "labels": ",".join(labels)})
        eval_fn = (lambda m: scalars(scores(data["eval"], tag(m, data["eval"]), labels)[1])) if args.eval_every else None
        net, summary = ft.train(model, features, collate, tagging_loss, len(data["train"]), s, run_id, stop,
                                eval_fn, args.eval_every, task=task)
        if d.is_main:
            write_json(out / "train_results.json", summary)
    else:
        net = model.to(d.device)
    results = {}
    for what, path in (("eval", args.validation_file), ("test", args.test_file)):
        if what not in data:
            continue
        logp = tag(net, data[what])
        labelled = data[what][0].tags is not None
        if labelled:
            predicted, found = scores(data[what], logp, labels)
            found["tag_scheme"] = scheme
        else:
            predicted, found = [[labels[i] for i in lp.argmax(-1)] for lp in logp], {}
        if d.is_main:
            out.mkdir(parents=True, exist_ok=True)
            nd.write_conll(out / f"{what}_predictions.txt", data[what], predicted)
            if found:
                write_json(out / f"{what}_results.json", found)
            if what == "eval":
                write_google_results(out / "eval_results.txt", found, summary["steps"])
                results = found
    if d.is_main:
        print(json.dumps(scalars(results)))
    return 0


def model_labels(task: TaskRecord | None, labels: list[str] | None, scheme: str | None, init: str | None
                 ) -> tuple[list[str], str]:
    """The labels and scheme of the run's tagger: the training file's, which a fine-tuned tagger
    given as --init_checkpoint (its task record: `task`) must share; without training, the checkpoint's."""
    tagger = task is not None and task.head == "token_classification" and task.labels is not None
    if labels is not None:
        if tagger and list(task.labels) != labels:
            raise BertkitError(f"--init_checkpoint {init} tags {', '.join(task.labels)}; the training file has "
                               f"{', '.join(labels)} (start from the pretrained model instead)")
        return labels, scheme
    if not tagger:
        raise BertkitError(f"--do_train=false needs a fine-tuned tagger as --init_checkpoint; {init} has "
                           + ("no task record" if task is None else f"a {task.head} head"))
    return list(task.labels), task.extra.get("tag_scheme", "IOB2")


def scalars(results: dict) -> dict:
    return {k: v for k, v in results.items() if isinstance(v, (int, float))}


def write_google_results(path: Path, results: dict, global_step: int) -> None:
    """Sorted `key = value` lines as Google's run_classifier.py writes eval_results.txt: eval_precision,
    eval_recall, eval_f1, eval_accuracy, eval_loss, global_step (steps trained in this run), loss, and
    eval_<TYPE>_precision/recall/f1 for each entity type."""
    lines = {f"eval_{k}": results[k] for k in ("precision", "recall", "f1", "accuracy", "loss")}
    lines.update({"global_step": global_step, "loss": results["loss"]})
    for t, r in results["per_type"].items():
        lines.update({f"eval_{t}_{k}": r[k] for k in ("precision", "recall", "f1")})
    write_atomic(path, "".join(f"{k} = {v}\n" for k, v in sorted(lines.items())).encode())
