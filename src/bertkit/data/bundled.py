"""The corpus and vocabulary shipped inside bertkit (see `assets/*/README.md` for their sources and
licences), and the small dataset made from them for the demo and the seed's `overfit` test set."""

from __future__ import annotations

import os
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def corpus_path() -> Path:
    """13 WikiText-2 articles in Google's input format (CC BY-SA 3.0)."""
    return ASSETS / "corpus" / "wikitext2_valid_sentences.txt"


def vocab_path() -> Path:
    """Google's uncased English WordPiece vocab, 30,522 tokens (Apache-2.0)."""
    return ASSETS / "vocab" / "uncased_vocab.txt"


def demo_dataset(output: str | os.PathLike, max_seq_length: int = 128, max_predictions_per_seq: int = 20,
                 dupe_factor: int = 5, seed: int = 12345) -> Path:
    """A pretraining dataset of the bundled corpus at `output`, made once (about 430 instances
    per dupe pass at length 128) and reused while its settings match. The seed's `overfit` test
    set is the same idea on Google's sample text, with dupe_factor 5."""
    from bertkit.data.pipeline import PrepareConfig, prepare
    from bertkit.data.shards import read_manifest, verify_dataset

    output = Path(output)
    want = {"max_seq_length": max_seq_length, "max_predictions_per_seq": max_predictions_per_seq,
            "dupe_factor": dupe_factor, "seed": seed}
    if (output / "manifest.json").is_file():
        settings = read_manifest(output)["settings"]
        if all(settings.get(k) == v for k, v in want.items()) and not verify_dataset(output, full=False):
            return output
    prepare(PrepareConfig(inputs=[str(corpus_path())], output=str(output), input_format="sentences",
                          vocab_file=str(vocab_path()), phases=[(max_seq_length, max_predictions_per_seq)],
                          dupe_factor=dupe_factor, seed=seed), rank=0, world=1, progress=False)
    return output
