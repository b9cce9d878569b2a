"""Bad input gets one line naming the file (exit code 2) or a documented, counted skip; never a
traceback, and no half-made dataset."""

import os
import subprocess
import sys

import pytest
from conftest import FIXTURES, REPO

from bertkit import BertkitError
from bertkit.cli import main as bertkit
from bertkit.data import text
from bertkit.data.shards import read_manifest

TWO_DOCS = ("The first document starts here.\nIt has a second sentence.\nAnd a third one.\n\n"
            "The second document is here.\nIt goes on for a while.\nThen it stops.\n")


def create(inputs, out, *extra):
    return bertkit(["data", "create", *map(str, inputs), "-o", str(out), "--workers", "1",
                    "--vocab-file", str(FIXTURES / "vocab_full.txt"), *extra])


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def test_empty_input(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert create([empty], tmp_path / "out") == 2
    assert "no document of two or more sentences" in one_line(capsys)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_invalid_utf8_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(TWO_DOCS.encode() + b"caf\xe9 au lait\n")
    assert create([bad], tmp_path / "out") == 2
    assert f"{bad}:8: not valid UTF-8" in one_line(capsys)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_one_sentence_documents_are_skipped_and_counted(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TWO_DOCS + "\nA document of one sentence.\n")
    assert create([corpus], tmp_path / "out") == 0
    counts = read_manifest(tmp_path / "out")["counts"]
    assert counts["one_sentence_documents_skipped"] == 1 and counts["documents"] == 2
    assert "1 one-sentence document(s) skipped" in capsys.readouterr().out
    lonely = tmp_path / "lonely.txt"
    lonely.write_text("Only one sentence.\n\nAnd another document of one.\n")
    assert create([lonely], tmp_path / "out2") == 2
    assert "no document of two or more sentences" in one_line(capsys)


def test_vocab_without_mask(tmp_path, capsys):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("".join(f"{t}\n" for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "a"]))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TWO_DOCS)
    assert bertkit(["data", "create", str(corpus), "-o", str(tmp_path / "out"), "--vocab-file", str(vocab)]) == 2
    line = one_line(capsys)
    assert str(vocab) in line and "[MASK]" in line


def test_shard_that_does_not_match_its_manifest(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TWO_DOCS * 3)
    out = tmp_path / "out"
    assert create([corpus], out) == 0
    capsys.readouterr()
    shard = out / read_manifest(out)["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[-20] ^= 1
    shard.write_bytes(bytes(data))
    assert bertkit(["data", "verify", str(out)]) == 2
    assert "sha256 does not match the manifest" in one_line(capsys)
    assert bertkit(["data", "dump", str(out)]) == 2
    assert f"{shard}: crc32c does not match the manifest" in one_line(capsys)
    assert bertkit(["data", "dump", str(out), "--skip-corrupt"]) == 2  # the only shard is left out
    assert "holds no instances" in capsys.readouterr().err
    (out / "manifest.json").unlink()
    assert bertkit(["data", "dump", str(out)]) == 2
    assert "no manifest.json" in one_line(capsys)


@pytest.mark.parametrize("flags, message", [
    (["--max-seq-length", "3"], "--max-seq-length: 3 must be between 5"),
    (["--dupe-factor", "0"], "--dupe-factor must be at least 1"),
    (["--input-format", "pdf"], "invalid choice"),
    (["--short-seq-prob", "1.5"], "--short-seq-prob must be between 0 and 1"),
    (["--no-such-flag"], "unrecognized arguments"),
])
def test_bad_flags(tmp_path, capsys, flags, message):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TWO_DOCS)
    assert create([corpus], tmp_path / "out", *flags) == 2
    assert message in one_line(capsys)


def test_missing_sentence_splitter_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "blingfire", None)  # as if not installed
    with pytest.raises(BertkitError, match=r"pip install 'bertkit\[corpus\]'.*--sentence-splitter regex"):
        text.sentence_splitter("blingfire")
    split = text.sentence_splitter("regex")  # the named fallback
    assert split("It rained. Then it stopped! Did it? Yes.") == ["It rained.", "Then it stopped!", "Did it?", "Yes."]


def test_the_real_command_exits_2_with_one_line(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    done = subprocess.run([sys.executable, "-m", "bertkit", "data", "create", str(empty), "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("bertkit data: error: ")
