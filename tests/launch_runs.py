"""The short pretraining run that the launcher tests start in several ways (one process, -v 2
under torchrun, two network namespaces, mpirun) and whose final weights they compare.

Every way runs the seed's overfit command line on a 2-layer, 32-wide model with the same global
batch of 16 sequences per step: 4 per micro-batch x (accumulation x workers) = 16. The training
loop draws each global micro-batch's samples and dropout from (seed, global micro-batch index), so
the runs differ only in the order of floating-point sums."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

MICRO_CONFIG = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                "intermediate_size": 64, "max_position_embeddings": 128}
STEPS = 3
GLOBAL_BATCH = 16

_cache: dict[str, Path] = {}


def shared(tmp_path_factory) -> Path:
    """A session folder with the model config and the overfit dataset, made once."""
    if "root" not in _cache:
        from bertkit.data.bundled import demo_dataset

        root = tmp_path_factory.mktemp("launch")
        (root / "config").mkdir()
        (root / "config" / "bert_config.json").write_text(json.dumps(MICRO_CONFIG))
        demo_dataset(root / "dataset", 128, 20, seed=12345)
        _cache["root"] = root
    return _cache["root"]


def overfit_argv(root: Path, output_dir: Path, steps: int = STEPS, timeout_s: float = 600) -> list[str]:
    """The seed's command line for the short run (without -v)."""
    return ["-c", "pretraining", "-t", "overfit", "-m", "tiny", "-d", "fp32",
            "--bert-config-dir", str(root / "config"), "--dataset_path", str(root / "dataset"),
            "-b", "4", "--global_batch_size", str(GLOBAL_BATCH), "-i", str(steps), "-w", "1",
            "--save_ckpt_steps", str(steps), "--learning_rate", "1e-2", "--device", "cpu",
            "--dist_timeout", str(timeout_s), "-o", str(output_dir)]


def bertkit(*argv: str, env: dict | None = None, timeout: float = 300, cwd=None) -> subprocess.CompletedProcess:
    """`bertkit ARGV...` as a user types it: the installed console script (else `python -m bertkit`)."""
    import os

    script = Path(sys.executable).parent / "bertkit"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "bertkit"]
    clean = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    return subprocess.run([*command, *argv], capture_output=True, text=True,
                          timeout=timeout, env={**clean, "OMP_NUM_THREADS": "1", **(env or {})}, cwd=cwd)


# What a test may have set for another launch (several servers, ranks of an outside launcher).
LAUNCH_VARIABLES = {"MULTI_HLS_IPS", "MPI_TCP_INCLUDE", "DOCKER_SSHD_PORT", "MASTER_ADDR", "MASTER_PORT",
                    "RANK", "WORLD_SIZE", "LOCAL_RANK", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"}


def reference(tmp_path_factory) -> Path:
    """The run in one process (accumulation 4); returns its output folder."""
    if "reference" not in _cache:
        root = shared(tmp_path_factory)
        out = root / "one_process"
        done = bertkit("demo", *overfit_argv(root, out))
        assert done.returncode == 0, done.stdout + done.stderr
        _cache["reference"] = out
    return _cache["reference"]


def weights(output_dir: Path, step: int = STEPS) -> dict[str, torch.Tensor]:
    return load_file(output_dir / f"ckpt-{step:08d}" / "model.safetensors")


def assert_same_weights(a: Path, b: Path, atol: float = 1e-5) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst <= atol, f"largest difference {worst:.3g}"
    # and training moved the weights far more than that: the runs agree on what they learned
    from bertkit.config import BertConfig
    from bertkit.model import BertForPreTraining

    torch.manual_seed(12345)  # bertkit pretrain's initial weights for --seed 12345
    initial = BertForPreTraining(BertConfig(**MICRO_CONFIG)).state_dict()
    moved = max((initial[k] - wb[k]).abs().max().item() for k in wb if k in initial)
    assert moved > 1000 * atol, f"training moved the weights by only {moved:.3g}"
