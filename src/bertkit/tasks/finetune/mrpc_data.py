"""MRPC (Microsoft Research Paraphrase Corpus): reading GLUE's and Microsoft's files, fetching them
when missing, pair features, padded batches, metrics and GLUE test output.

Every MRPC file is tab-separated with a header row and five columns:
`Quality  #1 ID  #2 ID  #1 String  #2 String` (GLUE's `test.tsv` has `index` in place of the
`Quality` label). Fields are never quoted: sentences hold bare `"` characters, so a line is split on
tabs only, as Python's csv module does with `quoting=csv.QUOTE_NONE`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from bertkit import BertkitError
from bertkit.fetch import fetch
from bertkit.io import read_text, write_atomic
from bertkit.tasks.finetune import classification
from bertkit.tokenizer import truncate_seq_pair

COLUMNS = ("#1 ID", "#2 ID", "#1 String", "#2 String")  # after the first column (Quality or index)
GLUE_FILES = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}
# Microsoft's release has a labelled train and test file only. Its labelled test file is the usual
# evaluation split in the paraphrase literature, so it serves as `dev` as well as `test`.
MICROSOFT_FILES = {"train": "msr_paraphrase_train.txt", "dev": "msr_paraphrase_test.txt",
                   "test": "msr_paraphrase_test.txt"}

# Where GLUE's download_glue_data.py takes MRPC from (the SentEval copies and GLUE's dev split ids;
# the 2018 script fetched the same dev_ids.tsv from a firebasestorage address that is gone). The
# sha256 digests are those that Hugging Face `datasets` records for these URLs in its GLUE builder.
MRPC_SOURCES: dict[str, tuple[str, str | None]] = {
    "msr_paraphrase_train.txt": (
        "https://dl.fbaipublicfiles.com/senteval/senteval_data/msr_paraphrase_train.txt",
        "60a9b09084528f0673eedee2b69cb941920f0b8cd0eeccefc464a98768457f89"),
    "msr_paraphrase_test.txt": (
        "https://dl.fbaipublicfiles.com/senteval/senteval_data/msr_paraphrase_test.txt",
        "a04e271090879aaba6423d65b94950c089298587d9c084bf9cd7439bd785f784"),
    "dev_ids.tsv": (
        "https://dl.fbaipublicfiles.com/glue/data/mrpc_dev_ids.tsv",
        "971d7767d81b997fd9060ade0ec23c4fc31cbb226a55d1bd4a1bac474eb81dc7"),
}


@dataclass
class MrpcExample:
    """One sentence pair. `guid` is the row's `index` column in GLUE's test.tsv, otherwise the data
    row's number in its file (0-based); `label` is 1 for a paraphrase, 0 if not, None if unlabelled."""
    guid: str
    text_a: str
    text_b: str
    label: int | None


@dataclass
class PairFeature:
    """`[CLS] a [SEP] b [SEP]` ids and token types, unpadded."""
    input_ids: list[int]
    token_type_ids: list[int]
    label: int | None


# ---- reading ----------------------------------------------------------------------------------

def read_lines(path: str | os.PathLike) -> list[str]:
    """A text file's lines without line ends; a UTF-8 byte order mark is dropped."""
    text = read_text(path, encoding="utf-8-sig")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return [line.rstrip("\r") for line in lines]


def read_mrpc(path: str | os.PathLike) -> list[MrpcExample]:
    """Read a GLUE MRPC file (`train.tsv`, `dev.tsv`, `test.tsv`) or Microsoft's
    `msr_paraphrase_*.txt`; the header says whether the first column is a label or an index."""
    lines = read_lines(path)
    if not lines:
        raise BertkitError(f"{path}: empty file; expected an MRPC header row")
    header = lines[0].split("\t")
    if len(header) != 5 or header[0] not in ("Quality", "index") or tuple(header[1:]) != COLUMNS:
        raise BertkitError(f"{path}:1: expected the tab-separated MRPC header Quality (or index), "
                           f"{', '.join(COLUMNS)}; found {lines[0][:80]!r}")
    labelled = header[0] == "Quality"
    examples = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 5:
            raise BertkitError(f"{path}:{n}: expected 5 tab-separated columns, found {len(fields)}")
        first, _, _, a, b = fields
        if labelled:
            if first not in ("0", "1"):
                raise BertkitError(f"{path}:{n}: label (Quality) must be 0 or 1, found {first!r}")
            examples.append(MrpcExample(str(len(examples)), a, b, int(first)))
        else:
            if not first.isdigit():
                raise BertkitError(f"{path}:{n}: index must be a whole number, found {first!r}")
            examples.append(MrpcExample(first, a, b, None))
    return examples


def find_mrpc(data_dir: str | os.PathLike, download: bool = True,
              sources: dict[str, tuple[str, str | None]] | None = None) -> dict[str, Path]:
    """The MRPC files in `data_dir` (or its `MRPC/` or `glue/` folder) by split: GLUE's names first,
    then Microsoft's. When there are none, fetch them into `data_dir` and build GLUE's files."""
    data_dir = Path(data_dir)
    for folder in (data_dir, data_dir / "MRPC", data_dir / "glue"):
        for names in (GLUE_FILES, MICROSOFT_FILES):
            found = {split: folder / name for split, name in names.items() if (folder / name).is_file()}
            if found:
                return found
    if not download:
        raise BertkitError(f"{data_dir}: holds no MRPC files ({', '.join(GLUE_FILES.values())} or "
                           f"{', '.join(sorted(set(MICROSOFT_FILES.values())))})")
    return download_mrpc(data_dir, sources)


def download_mrpc(data_dir: str | os.PathLike,
                  sources: dict[str, tuple[str, str | None]] | None = None) -> dict[str, Path]:
    """Fetch the SentEval copies of MRPC and GLUE's dev ids into `data_dir` and write GLUE's
    `train.tsv`, `dev.tsv` (the train rows whose id pair is a dev id) and `test.tsv` beside them,
    byte for byte as GLUE's download_glue_data.py writes them."""
    data_dir = Path(data_dir)
    sources = sources or MRPC_SOURCES
    got = {name: fetch(url, data_dir / name, sha256=sha, desc=f"MRPC {name}")
           for name, (url, sha) in sources.items()}
    ids_path = got["dev_ids.tsv"]
    dev_ids = set()
    for n, line in enumerate(read_lines(ids_path), start=1):
        pair = tuple(line.split("\t"))
        if len(pair) != 2:
            raise BertkitError(f"{ids_path}:{n}: expected two tab-separated ids")
        dev_ids.add(pair)

    def rows(path: Path) -> tuple[str, list[list[str]]]:
        # GLUE keeps the source's first line, byte order mark included, as the header.
        raw = path.read_bytes().decode("utf-8")
        lines = raw.split("\n")
        body = []
        for n, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            fields = line.strip().split("\t")
            if len(fields) != 5:
                raise BertkitError(f"{path}:{n}: expected 5 tab-separated columns, found {len(fields)}")
            body.append(fields)
        return lines[0] + "\n", body

    header, train_rows = rows(got["msr_paraphrase_train.txt"])
    train, dev = [header], [header]
    for fields in train_rows:
        (dev if (fields[1], fields[2]) in dev_ids else train).append("\t".join(fields) + "\n")
    _, test_rows = rows(got["msr_paraphrase_test.txt"])
    test = ["index\t" + "\t".join(COLUMNS) + "\n"]
    test += [f"{i}\t" + "\t".join(fields[1:]) + "\n" for i, fields in enumerate(test_rows)]
    out = {}
    for split, lines in (("train", train), ("dev", dev), ("test", test)):
        out[split] = data_dir / GLUE_FILES[split]
        write_atomic(out[split], "".join(lines).encode("utf-8"))
    return out


# ---- features and batches ---------------------------------------------------------------------

def make_features(examples: Sequence[MrpcExample], tokenizer, max_seq_length: int) -> list[PairFeature]:
    """`[CLS] a [SEP] b [SEP]` for each pair, the longer side cut first to fit `max_seq_length`
    (what `WordPiece.encode_pair` does, with every sentence tokenized in one batch)."""
    if max_seq_length < 3:
        raise BertkitError(f"--max_seq_length must be at least 3 for a sentence pair, got {max_seq_length}")
    ids = tokenizer.encode_batch([t for ex in examples for t in (ex.text_a, ex.text_b)])
    features = []
    for i, ex in enumerate(examples):
        a, b = ids[2 * i], ids[2 * i + 1]
        truncate_seq_pair(a, b, max_seq_length - 3)
        input_ids, types = tokenizer.build_pair(a, b)
        features.append(PairFeature(input_ids, types, ex.label))
    return features


def collate(features: Sequence[PairFeature], pad_id: int = 0,
            pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """A batch padded to its own longest sequence: input_ids, token_type_ids, attention_mask
    (B, T) int64, and labels (B,) int64 when every feature has one (classification.collate)."""
    return classification.collate(features, pad_id, pad_to_multiple_of)


# ---- metrics and output -----------------------------------------------------------------------

def metrics(predictions: Sequence[int], labels: Sequence[int]) -> dict[str, float]:
    """Accuracy, and precision, recall and F1 of the positive (paraphrase) class; a ratio whose
    denominator is 0 counts as 0."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    tp = sum(1 for p, y in zip(predictions, labels) if p == 1 and y == 1)
    fp = sum(1 for p, y in zip(predictions, labels) if p == 1 and y != 1)
    fn = sum(1 for p, y in zip(predictions, labels) if p != 1 and y == 1)
    correct = sum(1 for p, y in zip(predictions, labels) if p == y)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": correct / len(labels) if labels else 0.0, "f1": f1,
            "precision": precision, "recall": recall}


def write_predictions(path: str | os.PathLike, examples: Sequence[MrpcExample],
                      predictions: Sequence[int]) -> None:
    """GLUE's submission format: a header `index<TAB>prediction`, then one row per example."""
    classification.write_submission(Path(path), [ex.guid for ex in examples], [str(int(p)) for p in predictions])
