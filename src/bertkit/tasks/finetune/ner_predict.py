"""What `bertkit predict` does with a tagger (a token_classification task record): the input read
as sentences of words, every word tagged (long sentences in windows, as in evaluation), and one
JSON object per sentence:

    {"line": 3, "words": ["EU", "rejects", "German", "call"], "tags": ["I-ORG", "O", "I-MISC", "O"],
     "entities": [{"type": "ORG", "start": 0, "end": 1, "text": "EU", "score": 0.97}, ...]}

`start` and `end` are word indices (end exclusive); plain-text input adds each entity's character
offsets in its line (`char_start`, `char_end`, end exclusive). An entity's `score` is the mean, over
its words, of the probability of the tag predicted there. Entities are read from the tags by
conlleval's rules (ner_metric.py).

Inputs: a CoNLL file (words in the first field; any tags in it are left), JSON Lines with a
"tokens" list per line, or plain text, one sentence a line, split into words on whitespace. A .jsonl,
.json or .ndjson file is JSON Lines and a .conll file CoNLL; any other is CoNLL when its first word
line has two or more fields and ends in a tag (O, B-X, I-X), else plain text; --file_format says
which outright.
"""

from __future__ import annotations

import functools
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bertkit import BertkitError
from bertkit.checkpoint import load_model_folder, load_weights
from bertkit.model import BertForTokenClassification
from bertkit.task_record import TaskRecord
from bertkit.tasks.finetune import ner_data as nd
from bertkit.tasks.finetune.ner import tag_sentences
from bertkit.tasks.finetune.ner_metric import chunks, is_tag

FORMATS = ("conll", "jsonl", "txt")


@dataclass
class TaggingInput:
    """The sentences to tag, and for plain text each line and the character span of each word."""
    sentences: list[nd.Sentence]
    texts: list[str] | None = None
    spans: list[list[tuple[int, int]]] | None = None


def input_format(path: str, given: str | None) -> str:
    """conll, jsonl or txt (see the module docstring)."""
    if given:
        if given not in FORMATS:
            raise BertkitError(f"--file_format {given}: a tagger reads {', '.join(FORMATS)}")
        return given
    suffix = Path(path).suffix.lower()
    if suffix in nd.JSONL_SUFFIXES:
        return "jsonl"
    if suffix == ".conll":
        return "conll"
    for line in nd.read_lines(path):
        fields = line.split()
        if fields and fields[0] != nd.DOCSTART:
            return "conll" if len(fields) >= 2 and is_tag(fields[-1]) else "txt"
    return "txt"


def read_input(path: str, fmt: str | None) -> TaggingInput:
    """The sentences of `path` to tag; a file with none is an error."""
    fmt = input_format(path, fmt)
    if fmt == "conll":
        return TaggingInput(nd.read_conll(path, labelled=False, words_only=True))
    if fmt == "jsonl":
        return TaggingInput([nd.Sentence(s.words, None, s.lines) for s in nd.read_jsonl(path, labelled=False)])
    sentences, texts, spans = [], [], []
    for n, line in enumerate(nd.read_lines(path), start=1):
        found = [(m.start(), m.end()) for m in re.finditer(r"\S+", line)]
        if found:
            sentences.append(nd.Sentence([line[a:b] for a, b in found], None, [n] * len(found)))
            texts.append(line)
            spans.append(found)
    if not sentences:
        raise BertkitError(f"{path}: empty file: no text to tag")
    return TaggingInput(sentences, texts, spans)


def entities(words: list[str], tags: list[str], probability: np.ndarray, text: str | None = None,
             spans: list[tuple[int, int]] | None = None) -> list[dict]:
    """The entities of one tagged sentence (see the module docstring); `probability` (words,) of
    each predicted tag."""
    out = []
    for type_, start, end in chunks(tags):
        e = {"type": type_, "start": start, "end": end, "text": " ".join(words[start:end]),
             "score": float(probability[start:end].mean())}
        if spans is not None:
            e["char_start"], e["char_end"] = spans[start][0], spans[end - 1][1]
            e["text"] = text[e["char_start"]:e["char_end"]]
        out.append(e)
    return out


def predict(record: TaskRecord, data: TaggingInput, folder: Path, tokenizer, d, batch_size: int,
            precision: str) -> list[dict]:
    """One object per sentence of `data`: its words, tags and entities."""
    config, state, _, _ = load_model_folder(folder)
    labels = list(record.labels)
    model = BertForTokenClassification(config, num_labels=len(labels))
    if any(k.startswith("classifier.") for k in load_weights(model, state, str(folder))):
        raise BertkitError(f"{folder}: no trained classifier in the weights")
    collate = functools.partial(nd.collate, pad_id=tokenizer.pad_id, pad_to_multiple_of=8 if d.device.type != "cpu" else None)
    with tqdm(desc="predict", unit="window", disable=None if d.is_main else True, file=sys.stderr) as bar:
        logp = tag_sentences(model.to(d.device), data.sentences, tokenizer, labels, record.max_seq_length, collate,
                             batch_size, d, precision, progress=bar.update)
    objects = []
    for i, (s, lp) in enumerate(zip(data.sentences, logp)):
        best = lp.argmax(-1)  # (words,)
        tags = [labels[j] for j in best]
        probability = np.exp(lp[np.arange(len(best)), best])  # (words,)
        found = entities(s.words, tags, probability, data.texts and data.texts[i], data.spans and data.spans[i])
        objects.append({"line": s.lines[0], "words": s.words, "tags": tags, "entities": found})
    return objects
