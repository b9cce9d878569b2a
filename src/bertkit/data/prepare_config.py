"""The settings of a data run (`PrepareConfig`): inputs, vocabulary, phases, instance parameters,
the output layout, and how many worker processes a host gets."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from bertkit import BertkitError
from bertkit.data.text import FORMATS, SPLITTERS, list_inputs


SPLITS = ("training", "test")


@dataclass
class PrepareConfig:
    """What to make from which text. Output: `output` itself is the dataset when there is one phase
    and no test split and `name` is None; else the seed's layout,
    `output/seq_len_{L}/{name}/{training,test}/`."""

    inputs: list  # text files or folders of them; an item (path, format) overrides input_format
    output: str  # dataset folder, or the root of the seed's layout
    input_format: str = "sentences"  # see bertkit.data.text
    vocab_file: str | None = None  # Google's vocab.txt; None writes sentence text only
    lowercase: bool = True  # uncased vocab: lower-case and strip accents, as Google's do_lower_case
    # (max_seq_length, max_predictions_per_seq) per phase
    phases: list[tuple[int, int]] = field(default_factory=lambda: [(128, 20)])
    dupe_factor: int = 5  # passes over the text with new pairs (Google's default is 10; the seed's scripts use 5)
    short_seq_prob: float = 0.1  # odds that a document aims at a random shorter length
    masked_lm_prob: float = 0.15  # recorded in the manifest for load-time masking
    whole_word_mask: bool = False  # recorded in the manifest: the reader then masks whole words
    nsp: bool = True  # sentence pairs for next-sentence prediction; False: one-segment blocks (--no_nsp)
    seed: int = 12345
    test_fraction: float = 0.0  # documents held out for the test split
    name: str | None = None  # dataset name in the seed's layout (e.g. wikicorpus_en)
    text_output: str | None = None  # also write Google's input format (sentences) here, per split
    shard_mb: float = 16.0  # input text per job, hence per shard
    sentence_splitter: str = "blingfire"
    workers: int = 1  # local processes
    overwrite: bool = False  # replace a dataset made from other inputs or settings in an output folder

    def __post_init__(self):
        if not self.inputs:
            raise BertkitError("no input files given")
        if self.input_format not in FORMATS:
            raise BertkitError(f"--input-format: unknown format {self.input_format!r}; "
                               f"choose from {', '.join(FORMATS)}")
        if self.sentence_splitter not in SPLITTERS:
            raise BertkitError(f"--sentence-splitter: choose from {', '.join(SPLITTERS)}")
        self.phases = [(int(a), int(b)) for a, b in self.phases]
        for length, predictions in self.phases:
            if not 5 <= length <= 65535:
                raise BertkitError(f"--max-seq-length: {length} must be between 5 and 65535")
            if not 1 <= predictions <= length:
                raise BertkitError(f"--max-predictions-per-seq: {predictions} must be between 1 and "
                                   "the sequence length")
        if len({length for length, _ in self.phases}) != len(self.phases):
            raise BertkitError("two phases with the same max_seq_length")
        if self.phases and self.vocab_file is None:
            raise BertkitError("--vocab-file is needed to make instances")
        if self.dupe_factor < 1:
            raise BertkitError("--dupe-factor must be at least 1")
        for name in ("short_seq_prob", "masked_lm_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise BertkitError(f"--{name.replace('_', '-')} must be between 0 and 1")
        if not 0.0 <= self.test_fraction < 1.0:
            raise BertkitError("--test-fraction must be at least 0 and below 1")
        if self.shard_mb <= 0:
            raise BertkitError("--shard-mb must be positive")
        if self.workers < 1:
            raise BertkitError("--workers must be at least 1")
        if not self.phases and self.text_output is None:
            raise BertkitError("nothing to make: give a vocab and phases, or a text output folder")
        if self.phases and self.single and (len(self.phases) > 1 or self.test_fraction > 0):
            raise BertkitError("several phases or a test split need a dataset name (the seed's layout)")

    def input_files(self) -> list[tuple[Path, str]]:
        out = []
        for item in self.inputs:
            path, fmt = (item, self.input_format) if isinstance(item, (str, os.PathLike)) else item
            out += [(f, fmt) for f in list_inputs([path])]
        return out

    def describe_inputs(self) -> str:
        return ", ".join(str(item if isinstance(item, (str, os.PathLike)) else item[0]) for item in self.inputs)

    @property
    def single(self) -> bool:
        return self.name is None

    @property
    def splits(self) -> tuple[str, ...]:
        return SPLITS if self.test_fraction > 0 else SPLITS[:1]

    def dataset_dir(self, length: int, split: str) -> Path:
        if self.single:
            return Path(self.output)
        return Path(self.output) / f"seq_len_{length}" / self.name / split

    def text_dir(self, split: str) -> Path | None:
        if self.text_output is None:
            return None
        return Path(self.text_output) / split if self.test_fraction > 0 else Path(self.text_output)


def default_workers() -> int:
    """The cores this process may use, shared among the ranks on this host."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE", "1")) or 1)
    return max(1, cores // max(1, local))


