"""benchmarks/gpu_check: everything it does that needs no CUDA (the agreement yardsticks, the time
guard, the report, the carried files), and the whole check on the CPU from a clone with no
../shared beside it, as the GPU machine will see it."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from conftest import FIXTURES, REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_agree as agree  # noqa: E402
from gpu_checks import attention_kind, make_batch  # noqa: E402
from gpu_report import CARRY_DIR, CARRY_FILES, CARRY_LIMIT_BYTES, Budget, Part, Report, failed, run_parts, table  # noqa: E402
from gpu_speed import _peer_batch, realistic_lengths  # noqa: E402

from bertkit.config import variant  # noqa: E402


# ---- agreement ----------------------------------------------------------------------------------

def test_each_yardstick_passes_rounding_and_fails_a_real_difference():
    torch.manual_seed(0)
    ref = torch.randn(3, 24, 50)
    assert agree.close_abs(ref + 1e-7, ref, 1e-5)["ok"]
    assert not agree.close_abs(ref + 1e-4, ref, 1e-5)["ok"]
    assert not agree.close_abs(ref[:2], ref, 1e-5)["ok"]  # a shape mismatch is a failure, not a crash
    assert agree.close_rel(ref * (1 + 1e-3), ref, 1e-2)["ok"]
    assert not agree.close_rel(ref * 1.05, ref, 1e-2)["ok"]
    bad = ref.clone()
    bad[0, 0, 0] = float("nan")
    assert not agree.close_abs(bad, ref, 1e-5)["ok"] and not agree.close_rel(bad, ref, 1e-2)["ok"]
    assert agree.scalars_close(10.0 + 1e-6, 10.0, 1e-5)["ok"] and not agree.scalars_close(10.1, 10.0, 1e-5)["ok"]


def test_per_tensor_comparisons_find_the_one_tensor_that_differs():
    torch.manual_seed(0)
    ref = {f"bert.layers.{i}.query.weight": torch.randn(8, 8) for i in range(3)}
    ref["bert.layers.0.key.bias"] = torch.randn(8) * 1e-9  # rounding noise where the true value is 0
    got = {k: v * (1 + 1e-6) for k, v in ref.items()}
    got["bert.layers.0.key.bias"] = -ref["bert.layers.0.key.bias"]  # noise disagrees: left out, not failed
    rel = agree.tensors_rel_l2(got, ref, 1e-3)
    assert rel["ok"] and rel["left_out"] == ["bert.layers.0.key.bias"] and rel["tensors"] == 3
    assert agree.tensors_cosine(got, ref, 0.99)["ok"]
    got["bert.layers.1.query.weight"] = torch.randn(8, 8)  # an unrelated tensor
    rel, cos = agree.tensors_rel_l2(got, ref, 1e-3), agree.tensors_cosine(got, ref, 0.99)
    assert not rel["ok"] and rel["worst_tensor"] == "bert.layers.1.query.weight"
    assert not cos["ok"] and cos["worst_tensor"] == "bert.layers.1.query.weight"
    del got["bert.layers.2.query.weight"]
    assert not agree.tensors_rel_l2(got, ref, 1e-3)["ok"]  # a missing gradient fails


def test_attention_kind_from_profiler_names():
    assert attention_kind(["aten::_scaled_dot_product_flash_attention", "pytorch_flash::flash_fwd_kernel"]) == "flash"
    assert attention_kind(["aten::_scaled_dot_product_efficient_attention", "fmha_cutlassF"]) == "efficient"
    assert attention_kind(["aten::_scaled_dot_product_cudnn_attention"]) == "cudnn"
    assert attention_kind(["aten::_scaled_dot_product_flash_attention",
                           "aten::_scaled_dot_product_attention_math"]) == "math"
    assert attention_kind(["aten::matmul", "aten::_softmax"]) == "spelled_out"
    assert attention_kind(["aten::matmul"]) == "none"


def test_batches_padding_and_the_peer_layout():
    lengths = realistic_lengths(4000, 128, seed=0)
    assert 119 < sum(lengths) / len(lengths) < 123  # Google's WikiText-2 instances: 121.05
    cfg = variant("tiny")
    b = make_batch(cfg, [128, 17], 128, 20, seed=0)
    assert b["input_mask"][1].sum() == 17 and b["masked_lm_weights"][1].sum() == 15  # n - 2 at most
    assert (b["masked_lm_positions"][1][:15] < 16).all() and (b["input_ids"][1, 17:] == 0).all()
    peer = _peer_batch(b)
    assert (peer["labels"] != -100).sum() == b["masked_lm_weights"].sum()
    assert peer["labels"][0, b["masked_lm_positions"][0, 0]] == b["masked_lm_ids"][0, 0]


# ---- time guard and report ------------------------------------------------------------------------

def test_parts_that_no_longer_fit_are_skipped_and_errors_do_not_stop_the_rest(tmp_path):
    now = [0.0]
    budget = Budget(100.0, reserve_s=10.0, clock=lambda: now[0])
    report = Report(tmp_path / "r.json", {"device": "test"})
    seen_on_disk = []

    def take(seconds, result):
        def run():
            seen_on_disk.append(sorted(json.loads(report.path.read_text())["parts"]))
            now[0] += seconds
            return result
        return run

    def broken():
        raise RuntimeError("CUDA error: out of memory")

    run_parts([Part("a", take(50, {"ok": True}), 40),
               Part("b", broken, 1),
               Part("c", take(1, {}), 60),  # 50 s used, 40 left: does not fit
               Part("d", take(30, {"ok": False}), 30),
               Part("e", take(1, {}), 1, skip="not on this device")], budget, report, log=lambda s: None)
    parts = json.loads(report.path.read_text())["parts"]
    assert [parts[n]["status"] for n in "abcde"] == ["ok", "error", "skipped", "FAIL", "skipped"]
    assert "60 s" in parts["c"]["why"] and "out of memory" in parts["b"]["why"]
    assert seen_on_disk == [[], ["a", "b", "c"]]  # the report is on disk after every part
    assert failed(report.data) == ["b", "d"]
    assert table(report.data).count("\n") == 6


def test_a_part_running_past_the_budget_is_stopped(tmp_path):
    report = Report(tmp_path / "r.json", {})
    t = time.monotonic()
    run_parts([Part("slow", lambda: time.sleep(30) or {}, 0.1), Part("after", lambda: {"ok": True}, 0)],
              Budget(1.5, reserve_s=0.0), report, log=lambda s: None)
    assert time.monotonic() - t < 10
    assert report.data["parts"]["slow"]["status"] == "error"
    assert report.data["parts"]["after"]["status"] == "skipped"


# ---- the whole check, from a clone without ../shared ------------------------------------------------

@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A clone of this repository (with the working tree's uncommitted changes laid over it) in a
    folder with no `shared` beside it, its carried folder filled by benchmarks/gpu_carry.sh."""
    if not FIXTURES.is_dir():
        pytest.skip(f"{FIXTURES} is not here")
    top = tmp_path_factory.mktemp("lone")
    repo = top / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO), str(repo)], check=True)
    changed = subprocess.run(["git", "ls-files", "-mo", "--exclude-standard"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    for name in changed:
        if (REPO / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)
    env = {**os.environ, "SHARED": str(FIXTURES.parent), "PYTHON": sys.executable}
    subprocess.run(["bash", str(repo / "benchmarks" / "gpu_carry.sh")], cwd=top, env=env, check=True,
                   capture_output=True)
    assert not (top / "shared").exists()
    return repo


def test_carry_command_writes_exactly_the_carried_files_ignored_by_git(clone):
    carried = sorted(str(p.relative_to(clone / CARRY_DIR)) for p in (clone / CARRY_DIR).rglob("*") if p.is_file())
    assert carried == sorted(CARRY_FILES)
    assert sum((clone / CARRY_DIR / f).stat().st_size for f in carried) < CARRY_LIMIT_BYTES
    status = subprocess.run(["git", "status", "--porcelain", "--ignored", CARRY_DIR], cwd=clone,
                            capture_output=True, text=True).stdout
    assert status.startswith("!!"), status  # ignored: it travels only when a call carries it


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu_from_a_lone_clone(clone, tmp_path):
    """Must show: `bash benchmarks/gpu_check.sh --device cpu` end to end in under 2 minutes, without
    ../shared and without google-crc32c (absent on the GPU machine), writing the JSON report."""
    block = tmp_path / "block"
    block.mkdir()
    (block / "google_crc32c.py").write_text("raise ImportError('not on the GPU machine')\n")
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "PYTHONPATH": str(block),
           "PIP_NO_INDEX": "1"}
    t = time.monotonic()
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--device", "cpu"], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=180)
    seconds = time.monotonic() - t
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert seconds < 120, seconds
    report = json.loads((out / "gpu_report.json").read_text())
    parts = report["parts"]
    checks = ["fixture", "cpu_vs_device", "bf16_grads", "lamb_step", "padding", "attention", "resume"]
    assert all(parts[n]["status"] == "ok" for n in checks), {n: parts[n] for n in checks}
    assert parts["phase1_eager"]["bertkit"]["seq_per_s"] > 0 and parts["matmul"]["tflops"] > 0
    assert parts["phase1_compile"]["status"] == "skipped" and parts["phase2_compile"]["status"] == "skipped"
    assert "| part | status |" in proc.stdout
