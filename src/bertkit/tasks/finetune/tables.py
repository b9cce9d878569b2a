"""Examples in files: CSV, TSV and JSON Lines records (and plain text lines), each with the line it
came from, so that every bad input is one error naming the file, the line and the column.

- TSV: tab-separated, first row the header, fields never quoted (a `"` is text), as GLUE writes its
  files and Google's run_classifier.py reads them (csv with quotechar None). `header=` names the
  columns of a file without a header row (GLUE's CoLA train/dev).
- CSV: comma-separated with the usual double-quote quoting (fields may hold commas and newlines).
- JSON Lines: one JSON object per line; a record's fields are its keys.
- Text: one example per line; a tab separates the two texts of a pair.

The format comes from the extension (.csv, .tsv, .jsonl/.json, .txt) unless given.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from bertkit import BertkitError
from bertkit.io import read_bytes as file_bytes

FORMATS = ("csv", "tsv", "jsonl", "txt")
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".txt": "txt"}


@dataclass
class Record:
    """One row of a file: its first line number (1-based) and its fields by column name."""
    line: int
    fields: dict[str, object]


@dataclass
class Table:
    path: Path
    format: str
    columns: list[str]  # header names (JSON Lines: the keys of the first record)
    records: list[Record]

    def check_columns(self, *names: str | None) -> None:
        """Refuse a column the file does not have, naming the ones it has. (JSON Lines keys are
        checked in every record by `value`.)"""
        for name in names:
            if name is not None and self.format != "jsonl" and name not in self.columns:
                raise BertkitError(f"{self.path}:1: no column {name!r} (columns: {', '.join(self.columns)})")

    def value(self, record: Record, name: str) -> object:
        if name not in record.fields:
            kind = "key" if self.format == "jsonl" else "column"
            raise BertkitError(f"{self.path}:{record.line}: no {kind} {name!r} "
                               f"({kind}s: {', '.join(map(str, record.fields))})")
        return record.fields[name]

    def text(self, record: Record, name: str) -> str:
        """A text field: a string (JSON Lines: a JSON string)."""
        v = self.value(record, name)
        if not isinstance(v, str):
            raise BertkitError(f"{self.path}:{record.line}: column {name!r}: expected text, found {json.dumps(v)[:40]}")
        return v


def file_format(path: str | os.PathLike, given: str | None = None) -> str:
    if given:
        if given not in FORMATS:
            raise BertkitError(f"--file_format {given}: choose from {', '.join(FORMATS)}")
        return given
    found = EXTENSIONS.get(Path(path).suffix.lower())
    if found is None:
        raise BertkitError(f"{path}: cannot tell the format from the extension {Path(path).suffix or '(none)'!r}; "
                           f"name it with --file_format ({', '.join(FORMATS)})")
    return found


def decode(path: Path, raw: bytes, fmt: str = "txt", header: Sequence[str] | None = None) -> str:
    """UTF-8 text (a byte order mark dropped); a bad byte is one error naming its line and the
    column (or JSON key) that holds it."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        where = bad_column(path, raw.decode("utf-8-sig", "surrogateescape"), fmt, header)
        raise BertkitError(f"{path}:{line}:{where} not valid UTF-8 (byte 0x{raw[e.start]:02x})") from None


def bad_column(path: Path, text: str, fmt: str, header: Sequence[str] | None) -> str:
    """' column NAME:' for the first field holding an undecodable byte (kept as a surrogate escape)."""
    def bad(v: object) -> bool:
        return isinstance(v, str) and any("\udc80" <= c <= "\udcff" for c in v)

    try:
        if fmt in ("csv", "tsv"):
            names = header
            for _, fields in _rows(path, text, fmt):
                if names is None:
                    names = fields  # a bad byte in the header itself: named by its position below
                for i, v in enumerate(fields):
                    if bad(v):
                        return f" column {names[i].strip()!r}:" if names is not fields and i < len(names) else \
                            f" column {i + 1}:"
        elif fmt == "jsonl":
            for line in text.split("\n"):
                if bad(line):
                    obj = json.loads(line)
                    key = next((k for k, v in obj.items() if bad(v) or bad(k)), None) if isinstance(obj, dict) else None
                    return f" key {key!r}:" if key is not None else ""
    except (BertkitError, ValueError, RecursionError):
        pass  # the row is malformed too: the line alone is named
    return ""


def read_bytes(path: str | os.PathLike) -> bytes:
    """A file's bytes, refusing a missing, unreadable or empty one."""
    raw = file_bytes(path)
    if not raw.strip():
        raise BertkitError(f"{path}: empty file")
    return raw


def read_table(path: str | os.PathLike, fmt: str | None = None, header: Sequence[str] | None = None) -> Table:
    """The records of a CSV, TSV or JSON Lines file (`header`: the column names of a CSV/TSV file
    without a header row). Blank lines are skipped; a file with no record is an error."""
    path = Path(path)
    fmt = file_format(path, fmt)
    raw = read_bytes(path)
    if fmt == "jsonl":
        table = _read_jsonl(path, decode(path, raw, fmt))
    elif fmt in ("csv", "tsv"):
        table = _read_delimited(path, decode(path, raw, fmt, header), fmt, header)
    else:
        raise BertkitError(f"{path}: a {fmt} file holds no columns; give a CSV, TSV or JSON Lines file")
    if not table.records:
        raise BertkitError(f"{path}: no examples (only a header row)")
    return table


def _rows(path: Path, text: str, fmt: str):
    """(first line number, fields) of each row, blank lines left out."""
    if fmt == "tsv":  # no quoting: a row is a line
        for n, line in enumerate(text.split("\n"), start=1):
            line = line.rstrip("\r")
            if line.strip():
                yield n, line.split("\t")
        return
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    end = 0
    try:
        for fields in reader:
            start, end = end + 1, reader.line_num
            if any(f.strip() for f in fields):
                yield start, fields
    except csv.Error as e:
        raise BertkitError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None


def _read_delimited(path: Path, text: str, fmt: str, header: Sequence[str] | None) -> Table:
    rows = _rows(path, text, fmt)
    if header is None:
        first = next(rows, None)
        if first is None:
            raise BertkitError(f"{path}: empty file")
        columns = [c.strip() for c in first[1]]
    else:
        columns = list(header)
    records = []
    for n, fields in rows:
        if len(fields) != len(columns):
            raise BertkitError(f"{path}:{n}: {len(fields)} fields, but the {'header' if header is None else 'layout'} "
                               f"has {len(columns)} ({', '.join(columns)})")
        records.append(Record(n, dict(zip(columns, fields))))
    return Table(path, fmt, columns, records)


def _read_jsonl(path: Path, text: str) -> Table:
    records = []
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as e:
            raise BertkitError(f"{path}:{n}: not a JSON object ({str(e).split(':')[0]}); JSON Lines holds one "
                               "object per line") from None
        if not isinstance(obj, dict):
            raise BertkitError(f"{path}:{n}: expected a JSON object, found {type(obj).__name__}")
        records.append(Record(n, obj))
    return Table(path, "jsonl", list(records[0].fields) if records else [], records)


def read_lines(path: str | os.PathLike, pair: bool) -> Table:
    """A plain text file: one example per line (`text`), or with `pair` two tab-separated texts
    (`text`, `text_pair`). Blank lines are skipped."""
    path = Path(path)
    text = decode(path, read_bytes(path), "tsv" if pair else "txt", ["text", "text_pair"] if pair else None)
    columns = ["text", "text_pair"] if pair else ["text"]
    records = []
    for n, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t") if pair else [line]
        if len(fields) != len(columns):
            raise BertkitError(f"{path}:{n}: expected two tab-separated texts (the model reads a pair), "
                               f"found {len(fields)} field(s)")
        records.append(Record(n, dict(zip(columns, fields))))
    return Table(path, "txt", columns, records)
