"""The corpus and vocab shipped in the package, so the demo and the `overfit` test set need no download."""

import hashlib

from conftest import FIXTURES, VOCAB

from bertkit.data.bundled import corpus_path, demo_dataset, vocab_path
from bertkit.data.pretraining import PretrainingDataset
from bertkit.data.shards import read_manifest


def test_bundled_files_are_what_their_readmes_say():
    corpus = corpus_path().read_bytes()
    assert 100_000 < len(corpus) < 300_000
    # The README says: the opening 13 articles of the reference sentence file, unchanged.
    reference = (FIXTURES / "google_wikitext2_valid" / "wikitext2_valid_sentences.txt").read_bytes()
    assert reference.startswith(corpus) and corpus.count(b"\n\n") == 13
    readme = (corpus_path().parent / "README.md").read_text()
    assert "CC BY-SA 3.0" in readme and "Merity" in readme and "Wikipedia" in readme
    assert hashlib.sha256(vocab_path().read_bytes()).hexdigest() == hashlib.sha256(VOCAB.read_bytes()).hexdigest()
    readme = (vocab_path().parent / "README.md").read_text()
    assert "Apache" in readme and "Google" in readme


def test_demo_dataset_is_made_once_and_reused(tmp_path):
    out = demo_dataset(tmp_path / "demo", max_seq_length=64, max_predictions_per_seq=10, dupe_factor=1)
    manifest = read_manifest(out)
    shards = {p: p.stat().st_mtime_ns for p in out.glob("*.bkshard")}
    assert manifest["settings"]["max_seq_length"] == 64 and manifest["counts"]["documents"] == 13
    assert demo_dataset(tmp_path / "demo", max_seq_length=64, max_predictions_per_seq=10, dupe_factor=1) == out
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.bkshard")} == shards
    dataset = PretrainingDataset(out, 64, 10, 30522, (101, 102, 103, 0))
    assert len(dataset) == manifest["instances"] and len(dataset[0]["input_ids"]) <= 64
