"""The task record of a fine-tuned model: `task.json` in a bertkit model folder, beside
bert_config.json and checksummed in bertkit.json like the other files. It says what the head was
trained to do and how the inputs were read, so that `bertkit predict`, `bertkit convert --format hf`
and a later evaluation need no other flag. The tokenizer's casing stays where every model folder
keeps it (bertkit.json's `do_lower_case`).

    {"version": 1, "task": "rte", "head": "sequence_classification", "problem": "classification",
     "labels": ["entailment", "not_entailment"], "max_seq_length": 128,
     "text_column": "sentence1", "text_pair_column": "sentence2", "label_column": "label", "extra": {}}

`labels` are in index order (row i of the classifier is labels[i]); a regression head has one
output and `labels` null. `extra` holds what one task alone needs (JSON values).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from bertkit import BertkitError

VERSION = 1
HEADS = ("sequence_classification", "token_classification")
PROBLEMS = ("classification", "regression")


@dataclass(frozen=True)
class TaskRecord:
    """What a fine-tuned head does and how its inputs are read (see the module docstring)."""

    task: str  # the task that trained it: a GLUE name (cola, sst2, mnli, ...), mrpc, classify, ner, ...
    head: str  # sequence_classification (one output row per sequence) or token_classification (per token)
    problem: str = "classification"  # classification (softmax over labels) or regression (one float)
    labels: tuple[str, ...] | None = None  # label names in index order; None for regression
    max_seq_length: int = 128  # WordPiece tokens per sequence in training, [CLS] and [SEP] counted
    text_column: str | None = None  # the input's text: a CSV/TSV header name or a JSON Lines key
    text_pair_column: str | None = None  # the second text of a pair; None for single texts
    label_column: str | None = None  # where the training file held the label
    extra: dict = field(default_factory=dict)  # what one task alone needs, JSON values

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task:
            raise ValueError("task must be a non-empty string")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.problem not in PROBLEMS:
            raise ValueError(f"problem must be one of {', '.join(PROBLEMS)}, got {self.problem!r}")
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(self.labels))
            if not self.labels or not all(isinstance(x, str) for x in self.labels):
                raise ValueError("labels must be a non-empty list of strings, or null")
            if len(set(self.labels)) != len(self.labels):
                raise ValueError("labels repeat a name")
        if (self.problem == "regression") != (self.labels is None):
            raise ValueError("a regression head has labels null; a classification head lists its labels")
        if not isinstance(self.max_seq_length, int) or isinstance(self.max_seq_length, bool) or self.max_seq_length < 1:
            raise ValueError(f"max_seq_length must be a whole number >= 1, got {self.max_seq_length!r}")
        for name in ("text_column", "text_pair_column", "label_column"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string or null")
        if not isinstance(self.extra, dict):
            raise ValueError("extra must be a JSON object")

    @property
    def num_outputs(self) -> int:
        """Outputs of the head per sequence (or token): 1 for regression, else one per label."""
        return 1 if self.labels is None else len(self.labels)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["labels"] = None if self.labels is None else list(self.labels)
        return {"version": VERSION, **d}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, d: object, source: str) -> TaskRecord:
        """A record read back; anything malformed or unknown is one BertkitError naming `source`."""
        if not isinstance(d, dict):
            raise BertkitError(f"{source}: expected a JSON object")
        version = d.get("version", VERSION)
        if version != VERSION:
            raise BertkitError(f"{source}: task record version {version!r}; this bertkit reads version {VERSION}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"version"})
        if unknown:
            raise BertkitError(f"{source}: unknown key(s) {', '.join(map(str, unknown))}")
        try:
            return cls(**{k: v for k, v in d.items() if k in known})
        except (TypeError, ValueError) as e:
            raise BertkitError(f"{source}: {e}") from None

    @classmethod
    def from_json(cls, text: str, source: str) -> TaskRecord:
        try:
            d = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise BertkitError(f"{source}: not JSON ({e})") from None
        return cls.from_dict(d, source)
