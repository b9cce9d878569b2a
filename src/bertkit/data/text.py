"""Raw corpora to documents of sentences, and the plan that cuts a corpus into shard-sized jobs.

Input formats (`--input-format`):
    sentences      Google's input format: one sentence per line, a blank line between documents.
    paragraphs     one paragraph per line, a blank line between documents; paragraphs are split
                   into sentences.
    books          each file (or each piece of a large file) is one document; every non-blank line
                   is split into sentences. For BookCorpus-style folders of .txt books.
    wikitext       WikiText raw files: ` = Title = ` lines start documents, ` = = Section = = `
                   headings are dropped, other lines are paragraphs.
    wikiextractor  wikiextractor's output: `<doc ...>` ... `</doc>` per article, the title line
                   after `<doc>` dropped, other lines paragraphs.

Sentence splitting uses blingfire (its model ships in the wheel). The named fallback, `regex`,
splits after `.`, `!` or `?` (and closing quotes or brackets) when a space and a capital letter,
digit or opening quote follow; it is for machines without blingfire and splits worse.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bertkit import BertkitError

FORMATS = ("sentences", "paragraphs", "books", "wikitext", "wikiextractor")
SPLITTERS = ("blingfire", "regex")

# Where a document may begin, as a pattern over raw bytes: a cut goes at the end of the match.
_DOC_START = {
    "sentences": re.compile(rb"\n[ \t\r]*\n"),
    "paragraphs": re.compile(rb"\n[ \t\r]*\n"),
    "books": re.compile(rb"\n"),
    "wikitext": re.compile(rb"\n(?= = [^=])"),
    "wikiextractor": re.compile(rb"\n(?=<doc )"),
}
_WINDOW = 1 << 20
_HEADING = re.compile(r"^((?:= )+)(.*?)((?: =)+)$")
_REGEX_SPLIT = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[]?[A-Z0-9])")


@dataclass(frozen=True)
class Piece:
    """Bytes [start, end) of a file in format `fmt`; pieces begin where a document may begin."""
    path: str
    start: int
    end: int
    fmt: str

    def describe(self) -> str:
        return f"{Path(self.path).name}:{self.start}-{self.end}"


@dataclass(frozen=True)
class Job:
    """The unit of work and of output: pieces of input that become one shard per dataset."""
    name: str
    pieces: tuple[Piece, ...]

    @property
    def size(self) -> int:
        return sum(p.end - p.start for p in self.pieces)


def list_inputs(inputs: list[str | os.PathLike]) -> list[Path]:
    """Files named, and the files under folders named (recursively, hidden files left out), each
    list sorted so that the plan does not depend on the order a file system lists them in."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise BertkitError(f"{path}: folder holds no input files")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise BertkitError(f"{path}: no such input file or folder")
    return files


def plan_jobs(files: list[tuple[Path, str]], target_bytes: int) -> list[Job]:
    """Cut (file, format) inputs at document boundaries into pieces of about `target_bytes`, and
    pack consecutive pieces into jobs of about that size. The plan depends on the inputs and the
    size only, never on the number of workers, so the output does not either."""
    for _, fmt in files:
        if fmt not in FORMATS:
            raise BertkitError(f"--input-format: unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    pieces = [p for f, fmt in files for p in _cut(f, fmt, target_bytes)]
    jobs, current, size = [], [], 0
    for piece in pieces:
        current.append(piece)
        size += piece.end - piece.start
        if size >= target_bytes:
            jobs.append(current)
            current, size = [], 0
    if current:
        jobs.append(current)
    return [Job(f"part-{i:05d}", tuple(p)) for i, p in enumerate(jobs)]


def _cut(path: Path, fmt: str, target: int) -> list[Piece]:
    size = path.stat().st_size
    cuts = [0]
    with open(path, "rb") as f:
        while size - cuts[-1] > target:
            cut = _next_start(f, cuts[-1] + target, size, _DOC_START[fmt])
            if cut is None:
                break
            cuts.append(cut)
    cuts.append(size)
    return [Piece(str(path), a, b, fmt) for a, b in zip(cuts, cuts[1:])]


def _next_start(f, pos: int, size: int, pattern: re.Pattern) -> int | None:
    """The first place at or after `pos - 1` where a document may begin, or None."""
    pos -= 1  # so that a newline just before `pos` counts
    while pos < size:
        f.seek(pos)
        window = f.read(_WINDOW + 64)
        m = pattern.search(window)
        # A match must leave room for its look-ahead, unless the file ends inside the window.
        if m and (m.end() + 8 <= len(window) or pos + len(window) >= size):
            return pos + m.end() if pos + m.end() < size else None
        pos += _WINDOW
    return None


def read_piece(piece: Piece) -> str:
    """The text of a piece; invalid UTF-8 is an error naming the file and line."""
    try:
        with open(piece.path, "rb") as f:
            f.seek(piece.start)
            raw = f.read(piece.end - piece.start)
    except OSError as e:
        raise BertkitError(f"{piece.path}: cannot read ({e.strerror})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        with open(piece.path, "rb") as f:
            line = f.read(piece.start).count(b"\n") + raw[:e.start].count(b"\n") + 1
        raise BertkitError(f"{piece.path}:{line}: not valid UTF-8 (byte {piece.start + e.start}); "
                           "convert the file to UTF-8") from None


# ---- documents ----------------------------------------------------------------------------------

def documents(text: str, fmt: str, split: Callable[[str], list[str]]) -> Iterator[list[str]]:
    """Yield each document of `text` (in format `fmt`) as a list of sentences; may yield empty lists."""
    if fmt == "books":
        yield [s for line in text.split("\n") if line.strip() for s in split(line.strip())]
        return
    doc: list[str] = []
    in_title = False
    for line in text.split("\n"):
        s = line.strip()
        if fmt in ("sentences", "paragraphs"):
            if not s:
                yield doc
                doc = []
            elif fmt == "sentences":
                doc.append(s)
            else:
                doc.extend(split(s))
        elif fmt == "wikitext":
            if not s:
                continue
            heading = _HEADING.match(s)
            if heading and len(heading.group(1)) == len(heading.group(3)) == 2:  # ` = Title = `
                yield doc
                doc = []
            elif not heading:
                doc.extend(split(s))
        else:  # wikiextractor
            if s.startswith("<doc ") and s.endswith(">"):
                yield doc
                doc, in_title = [], True
            elif s == "</doc>":
                yield doc
                doc = []
            elif in_title:  # the article's title repeats on the line after <doc ...>
                in_title = not s
            elif s:
                doc.extend(split(s))
    yield doc


def sentence_splitter(name: str) -> Callable[[str], list[str]]:
    """A function from a paragraph to its sentences."""
    if name == "blingfire":
        try:
            import blingfire
        except ImportError:
            raise BertkitError("sentence splitting needs blingfire: pip install 'bertkit[corpus]' "
                               "(or pass --sentence-splitter regex for the cruder built-in rules)") from None
        to_sentences = blingfire.text_to_sentences

        def split(paragraph: str) -> list[str]:
            return [s for s in to_sentences(paragraph).split("\n") if s.strip()]
        return split
    if name == "regex":
        def split_regex(paragraph: str) -> list[str]:
            return [s.strip() for s in _REGEX_SPLIT.split(paragraph) if s.strip()]
        return split_regex
    raise BertkitError(f"--sentence-splitter: unknown splitter {name!r}; choose from {', '.join(SPLITTERS)}")
