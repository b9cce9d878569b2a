"""What the fault tests share: a tiny pretraining setup (Google's sample text, a 2-layer 32-wide
model), its command lines, and checks of runs and error lines. Not a test module."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bertkit.cli import main as bertkit
from conftest import FIXTURES, REPO

INJECT = Path(__file__).with_name("inject.py")
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 128}


def small_vocab() -> list[str]:
    """Google's first 2000 tokens (special tokens, characters, a few words) and its 997 "##x"
    continuations: every word tokenizes (into characters), and a checkpoint is ~1.5 MB, not 12."""
    lines = (FIXTURES / "vocab_full.txt").read_text(encoding="utf-8").splitlines()
    return lines[:2000] + [t for t in lines[2000:] if t.startswith("##") and len(t) == 3]


def tiny_setup(tmp_path_factory) -> Path:
    """A folder with `data/` (a bertkit dataset of Google's sample text, seq 64, 10 predictions, on
    the small vocabulary) and `bert_config.json`; made once per session, shared by the fault tests."""
    root = tmp_path_factory.getbasetemp() / "faults-tiny"
    if not (root / "data" / "manifest.json").is_file():
        root.mkdir(exist_ok=True)
        vocab = small_vocab()
        (root / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        assert bertkit(["data", "create", str(FIXTURES / "sample_text.txt"), "-o", str(root / "data"),
                        "--max_seq_length", "64", "--max_predictions_per_seq", "10", "--dupe_factor", "5",
                        "--workers", "1", "--vocab_file", str(root / "vocab.txt")]) == 0
        (root / "bert_config.json").write_text(json.dumps({**TINY, "vocab_size": len(vocab)}))
    return root


def pretrain_args(root: Path, out: Path, steps: int = 8, **extra) -> list[str]:
    flags = {"input_files_dir": root / "data", "bert_config_file": root / "bert_config.json", "output_dir": out,
             "train_batch_size": 4, "max_seq_length": 64, "max_predictions_per_seq": 10,
             "num_train_steps": steps, "num_warmup_steps": 2, "learning_rate": 1e-3,
             "save_checkpoints_steps": 3, "log_every": 1, "keep_checkpoints": 0, **extra}
    return ["pretrain", *(f"--{k}={v}" for k, v in flags.items())]


def spawn(argv: list[str], fault: str = "none:", threads: int = 1, **env) -> subprocess.Popen:
    """`bertkit ARGV` in a new process through inject.py, with the fault KIND:ARG."""
    return subprocess.Popen([sys.executable, str(INJECT), *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": str(threads),
                                 "BERTKIT_THREADS": str(threads), "BERTKIT_FAULT": fault, **env})


def same_run(x: Path, y: Path) -> None:
    """Two checkpoints hold the very same weights and optimizer state."""
    wx, wy = load_file(x / "model.safetensors"), load_file(y / "model.safetensors")
    assert wx.keys() == wy.keys()
    for k in wx:
        assert torch.equal(wx[k], wy[k]), f"{k} differs between {x} and {y}"
    ox = torch.load(x / "optimizer.pt", weights_only=True)["state"]
    oy = torch.load(y / "optimizer.pt", weights_only=True)["state"]
    assert ox.keys() == oy.keys()
    for k in ox:
        for s in ox[k]:
            assert torch.equal(ox[k][s], oy[k][s]), f"optimizer {k}.{s} differs between {x} and {y}"


def one_line(err: str) -> str:
    """The single line a refused command prints: no traceback, one line."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in lines[0]
    return lines[0]


@pytest.fixture
def one_thread():
    """In-process runs on one torch thread, as the spawned ones: bit-for-bit comparable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
