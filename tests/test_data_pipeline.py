"""The pipeline from raw text to datasets: Google's input format, determinism whatever the number
of processes or hosts, resuming, and the seed's layout."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA, FIXTURES, REPO, VOCAB

from bertkit import BertkitError
from bertkit.cli import main as bertkit
from bertkit.data.pipeline import PrepareConfig, prepare
from bertkit.data.shards import Shard, read_manifest

WIKITEXT = DATA / "corpus" / "wikitext-2-raw" / "wiki.valid.raw"
REFERENCE_SENTENCES = FIXTURES / "google_wikitext2_valid" / "wikitext2_valid_sentences.txt"


def config(out: Path, **kw) -> PrepareConfig:
    settings = dict(inputs=[str(WIKITEXT)], output=str(out), input_format="wikitext", vocab_file=str(VOCAB),
                    phases=[(64, 10), (128, 20)], dupe_factor=2, test_fraction=0.2, name="wikicorpus_en",
                    text_output=str(out / "formatted"), shard_mb=0.15)
    settings.update(kw)
    return PrepareConfig(**settings)


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "data"
    prepare(config(out), rank=0, world=1, progress=False)
    return out


def test_format_writes_googles_input_format(tmp_path, capsys):
    """WikiText raw -> one sentence per line, a blank line after each article: the same bytes as the
    reference file made for Google's run (blingfire sentences, section headings dropped)."""
    assert bertkit(["data", "format", str(WIKITEXT), "--input-format", "wikitext", "-o", str(tmp_path / "text"),
                    "--workers", "1", "--shard-mb", "100"]) == 0
    assert (tmp_path / "text" / "part-00000.txt").read_bytes() == REFERENCE_SENTENCES.read_bytes()


def test_seed_layout_and_manifests(single):
    for length, predictions in [(64, 10), (128, 20)]:
        training = read_manifest(single / f"seq_len_{length}" / "wikicorpus_en" / "training")
        test = read_manifest(single / f"seq_len_{length}" / "wikicorpus_en" / "test")
        assert training["settings"]["max_predictions_per_seq"] == predictions
        assert training["settings"]["token_dtype"] == "<u2"  # 30,522 ids fit in 16 bits
        # The articles are split between training and test, none in both, none lost.
        assert training["counts"]["documents"] + test["counts"]["documents"] == 60
        assert 3 <= test["counts"]["documents"] <= 25
        assert len(training["shards"]) > 5
        for entry in training["shards"]:
            shard = Shard(single / f"seq_len_{length}" / "wikicorpus_en" / "training" / entry["file"])
            assert len(shard) == entry["instances"] and shard.tokens.size == entry["tokens"]
            assert shard.tokens.dtype.itemsize == 2 and (shard.offsets[1:] - shard.offsets[:-1]).max() <= length
    sentences = b"".join(p.read_bytes() for p in sorted((single / "formatted").rglob("*.txt")))
    assert sorted(sentences.split(b"\n\n")) == sorted(REFERENCE_SENTENCES.read_bytes().split(b"\n\n"))
    assert not list(single.rglob(".parts")) and not (single / ".bertkit-prepare").exists()


def test_output_is_the_same_whatever_the_number_of_workers(single, tmp_path):
    prepare(config(tmp_path / "data", workers=2), rank=0, world=1, progress=False)
    assert tree(tmp_path / "data") == tree(single)


def test_output_is_the_same_across_ranks(single, tmp_path):
    """Two ranks, as torchrun would start them (RANK, WORLD_SIZE), sharing the output folder: each
    makes its share of the shards and rank 0 writes the manifests once rank 1's are there."""
    out = tmp_path / "data"
    command = [sys.executable, "-m", "bertkit", "data", "prepare", "--input", str(WIKITEXT),
               "--input-format", "wikitext", "--workdir", str(out), "--vocab-file", str(VOCAB),
               "--phases", "64:10,128:20", "--dupe-factor", "2", "--test-fraction", "0.2",
               "--shard-mb", "0.15", "--workers", "1"]
    env = {**os.environ, "WORLD_SIZE": "2", "PYTHONPATH": str(REPO / "src")}
    ranks = [subprocess.Popen(command, env={**env, "RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (1, 0)]
    for rank in ranks:
        out_text, err = rank.communicate(timeout=120)
        assert rank.returncode == 0, err
    assert "instances" in out_text  # rank 0 reports
    assert tree(out) == tree(single)


def test_a_stopped_run_resumes_and_redoes_only_what_is_missing(tmp_path):
    late = tmp_path / "zz_late.raw"  # planned last: its job runs after the WikiText ones
    good = " = Late article = \n \n It starts here . It goes on . It ends here .\n \n It has a second paragraph .\n"
    late.write_bytes(good.replace("goes", "g\xffes").encode("utf-8", "surrogateescape").replace(b"\xc3\xbf", b"\xff"))
    inputs = [str(WIKITEXT), str(late)]
    out = tmp_path / "data"
    with pytest.raises(BertkitError, match="zz_late.raw:3: not valid UTF-8"):
        prepare(config(out, inputs=inputs), rank=0, world=1, progress=False)
    dataset = out / "seq_len_128" / "wikicorpus_en" / "training"
    assert not (dataset / "manifest.json").exists()
    done = {p: p.stat().st_mtime_ns for p in dataset.glob("*.bkshard")}
    assert len(done) > 5
    late.write_bytes(good.encode())  # fixed, same size: the same plan
    prepare(config(out, inputs=inputs), rank=0, world=1, progress=False)
    assert [p.name for p, t in done.items() if p.stat().st_mtime_ns != t] == []  # finished jobs were not redone
    fresh = tmp_path / "fresh"
    prepare(config(fresh, inputs=inputs), rank=0, world=1, progress=False)
    assert tree(out) == tree(fresh)
    everything = {p: p.stat().st_mtime_ns for p in out.rglob("*.bkshard")}
    prepare(config(out, inputs=inputs), rank=0, world=1, progress=False)  # all done: nothing to redo
    assert all(p.stat().st_mtime_ns == t for p, t in everything.items())
    assert tree(out) == tree(fresh)


def test_create_takes_googles_flags(tmp_path, capsys):
    out = tmp_path / "phase2"
    assert bertkit(["data", "create", "--input_file", str(FIXTURES / "sample_text.txt"), "--output_file", str(out),
                    "--vocab_file", str(FIXTURES / "vocab_full.txt"), "--do_lower_case=True",
                    "--max_seq_length=512", "--max_predictions_per_seq=80", "--random_seed=12345",
                    "--dupe_factor=2", "--masked_lm_prob=0.15", "--short_seq_prob=0.1", "--workers=1"]) == 0
    settings = read_manifest(out)["settings"]
    assert (settings["max_seq_length"], settings["max_predictions_per_seq"], settings["dupe_factor"]) == (512, 80, 2)
    assert f"{out}: " in capsys.readouterr().out


def test_rank_and_world_from_torchrun_or_mpirun(monkeypatch):
    from bertkit.ranks import env_ranks

    def rank_and_world():
        return env_ranks()[:2]

    for key in ("RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_RANK", "PMI_SIZE",
                "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    assert rank_and_world() == (0, 1)
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "3")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert rank_and_world() == (3, 4)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert rank_and_world() == (1, 2)  # torchrun's variables first
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(BertkitError, match="RANK=2 is outside world size"):
        rank_and_world()
