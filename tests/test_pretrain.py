"""`bertkit pretrain` end to end: data parallelism equals accumulation, exact resume after SIGKILL
and SIGTERM, the seed's overfit run, flags and output-folder rules."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from bertkit.checkpoint import list_checkpoints
from bertkit.cli import main as cli
from conftest import FIXTURES, free_port

TINY = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 128}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Google's sample text as a bertkit dataset (seq 64, 10 predictions), and a tiny config."""
    root = tmp_path_factory.mktemp("pretrain")
    assert cli(["data", "create", str(FIXTURES / "sample_text.txt"), "-o", str(root / "data"),
                "--max_seq_length", "64", "--max_predictions_per_seq", "10", "--dupe_factor", "5",
                "--vocab_file", str(FIXTURES / "vocab_full.txt")]) == 0
    (root / "bert_config.json").write_text(json.dumps(TINY))
    return root


def args(root, out, steps=10, **extra):
    flags = {"input_files_dir": root / "data", "bert_config_file": root / "bert_config.json", "output_dir": out,
             "train_batch_size": 4, "max_seq_length": 64, "max_predictions_per_seq": 10,
             "num_train_steps": steps, "num_warmup_steps": 2, "learning_rate": 1e-3,
             "save_checkpoints_steps": 3, "log_every": 1, "keep_checkpoints": 0, **extra}
    return [f"--{k}={v}" for k, v in flags.items()]


def weights(folder):
    return load_file(folder / "model.safetensors")


def run(argv, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "bertkit", "pretrain", *argv], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, **kw)


def test_two_processes_equal_accumulation(dataset, tmp_path):
    """torchrun with 2 gloo processes of batch B == 1 process of batch B with 2 accumulation steps."""
    one = run(args(dataset, tmp_path / "one", steps=5, num_accumulation_steps=2, learning_rate=1e-2))
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(free_port()), "-m", "bertkit", "pretrain",
                          *args(dataset, tmp_path / "two", steps=5, learning_rate=1e-2)],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr
    assert "global batch 8 = 4 per process x 1 accumulation x 2 process(es)" in two.stderr
    a, b = weights(tmp_path / "one" / "ckpt-00000005"), weights(tmp_path / "two" / "ckpt-00000005")
    assert set(a) == set(b)
    moved = (a["bert.layers.0.query.weight"] - weights(tmp_path / "one" / "ckpt-00000003")[
        "bert.layers.0.query.weight"]).abs().max()
    assert moved > 5e-4  # the weights did change over the steps compared, by 50x the tolerance
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0, msg=name)


def assert_same_run(x, y):
    wx, wy = weights(x), weights(y)
    assert all(torch.equal(wx[k], wy[k]) for k in wx)
    ox = torch.load(x / "optimizer.pt", weights_only=True)["state"]
    oy = torch.load(y / "optimizer.pt", weights_only=True)["state"]
    assert all(torch.equal(ox[k][s], oy[k][s]) for k in ox for s in ("exp_avg", "exp_avg_sq", "step"))


def wait_for(path, proc, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, f"no {path}"
        time.sleep(0.05)


def padded_batches(root, steps: int, batch_size: int = 4) -> int:
    """How many of the run's first batches have padding (the run's own stream and collate)."""
    from bertkit.data.pretraining import collate
    from bertkit.stream import Stream
    from bertkit.tasks.pretrain import PretrainSettings, dataset, drop_full_mask, parser
    from bertkit.tokenizer import load_vocab

    s = PretrainSettings.from_args(parser().parse_args(args(root, "unused")))
    data = dataset(str(root / "data"), s, load_vocab(root / "data" / "vocab.txt"))
    stream = Stream(data, batch_size, lambda items: drop_full_mask(collate(items, 10)), seed=s.run.seed)
    return sum(stream.batch(i)["input_mask"] is not None for i in range(steps))


def test_resume_after_sigkill_and_sigterm_is_bit_identical(dataset, tmp_path):
    # Half the batches have padding and take the unpadded path (on by default; test_unpadded.py
    # checks that a run takes it), the rest the dense one: resume is exact on both.
    assert 3 <= padded_batches(dataset, 10) <= 7
    straight = run(args(dataset, tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr
    reference = tmp_path / "straight" / "ckpt-00000010"

    # SIGKILL right after the step-6 checkpoint appears: whatever was being written later is lost.
    out = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, "-m", "bertkit", "pretrain", *args(dataset, out)],
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wait_for(out / "ckpt-00000006", p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (out / "ckpt-00000010").exists()
    resumed = run(args(dataset, out))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr
    assert_same_run(reference, out / "ckpt-00000010")

    # SIGTERM at some moment mid-run: a checkpoint of the current step, exit 143, then resume.
    out = tmp_path / "terminated"
    p = subprocess.Popen([sys.executable, "-m", "bertkit", "pretrain", *args(dataset, out, save_checkpoints_steps=100)],
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not (out / "log.jsonl").exists() or not (out / "log.jsonl").read_text():  # training has started
        assert p.poll() is None and time.time() < deadline
        time.sleep(0.05)
    t0 = time.time()
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 143
    assert time.time() - t0 < 30
    saved = list_checkpoints(out)
    assert len(saved) == 1 and "SIGTERM" in p.stderr.read()
    resumed = run(args(dataset, out, save_checkpoints_steps=100))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(reference, out / "ckpt-00000010")


def test_max_seconds_stops_with_a_checkpoint_that_resumes_bit_identically(dataset, tmp_path):
    """--max_seconds: checkpoint, final evaluation, exit 0 and a line saying so; the budget is per
    invocation (the same command trains on), and resuming to N steps equals training straight to N."""
    straight = run(args(dataset, tmp_path / "straight", peak_tflops=0.05))
    assert straight.returncode == 0, straight.stderr
    out = tmp_path / "budget"
    budget = args(dataset, out, max_seconds=1e-6, peak_tflops=0.05, do_eval=True,
                  eval_files_dir=dataset / "data", max_eval_steps=2)
    for step in (1, 2):  # a budget shorter than one step: one step per invocation
        r = run(budget)
        assert r.returncode == 0, r.stderr
        assert f"the time budget ended the run at step {step} of 10" in r.stderr
        assert [p.name for p in list_checkpoints(out)][-1] == f"ckpt-0000000{step}"
        result = json.loads((out / "results.json").read_text())
        assert result["stopped_by"] == "max_seconds" and result["step"] == step and "eval_mlm_accuracy" in result
    rest = run(args(dataset, out, peak_tflops=0.05))
    assert rest.returncode == 0, rest.stderr
    assert "stopped_by" not in json.loads((out / "results.json").read_text())
    assert_same_run(tmp_path / "straight" / "ckpt-00000010", out / "ckpt-00000010")
    # every record has its times; training time carries over the resumes and leaves evaluation out
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all("wall_s" in r and "train_s" in r for r in records)
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 11))
    assert all(a["train_s"] < b["train_s"] for a, b in zip(train, train[1:]))
    assert all(0 < r["mfu"] < 1 for r in train)
    assert json.loads((out / "results.json").read_text())["peak_tflops"] == 0.05
    assert "MFU against" not in rest.stderr  # --peak_tflops given: nothing measured


def test_max_seconds_stops_all_ranks_at_the_same_step(dataset, tmp_path):
    """Two processes whose clocks differ: the budget stop is agreed in the step's all-reduce, so both
    stop after the same step (a rank that went on alone would wait on the other until the timeout)."""
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_port", str(free_port()), "-m", "bertkit", "pretrain",
                        *args(dataset, tmp_path, steps=500, max_seconds=1.5, peak_tflops=0.05,
                              save_checkpoints_steps=1000)],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr
    step = json.loads((tmp_path / "results.json").read_text())["step"]
    assert 1 <= step < 500 and f"the time budget ended the run at step {step} of 500" in r.stderr
    assert [p.name for p in list_checkpoints(tmp_path)] == [f"ckpt-{step:08d}"]


def test_overfit_reaches_high_mlm_accuracy(dataset, tmp_path):
    """The seed's overfit test set: a tiny model learns its own small data (fixed masks here: TFRecord)."""
    t0 = time.time()
    r = run(["--input_files_dir", str(FIXTURES / "pretrain_seq128.tfrecord"),
             "--init_checkpoint", str(FIXTURES / "uncased_L-2_H-128_A-2.zip"), "--output_dir", str(tmp_path),
             "--train_batch_size", "23", "--num_train_steps", "150", "--num_warmup_steps", "10",
             "--learning_rate", "2e-2", "--save_checkpoints_steps", "1000", "--log_every", "25",
             "--do_eval", "--eval_files_dir", str(FIXTURES / "pretrain_seq128.tfrecord")])
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "results.json").read_text())
    print(f"overfit: eval MLM accuracy {result['eval_mlm_accuracy']:.3f} after 150 steps, {time.time() - t0:.0f} s")
    assert result["eval_mlm_accuracy"] >= 0.9


def test_bad_flags_and_foreign_output_dir(dataset, tmp_path, capsys):
    assert cli(["pretrain", *args(dataset, tmp_path, num_train_steps=5, num_warmup_steps=-1)]) == 2
    assert "--num_warmup_steps and --num_train_steps must be >= 0" in capsys.readouterr().err
    assert cli(["pretrain", *args(dataset, tmp_path, steps=2), "--max_seq_length=1000"]) == 2
    assert "max_position_embeddings" in capsys.readouterr().err
    assert cli(["pretrain", *args(dataset, tmp_path, steps=2), "--bf16_config_path", str(tmp_path / "nope.json"),
                "--precision", "bf16"]) == 2
    assert "nope.json" in capsys.readouterr().err
    # kebab-case spellings parse too; the run leaves a checkpoint
    assert cli(["pretrain", "--input-files-dir", str(dataset / "data"), "--bert-config-file", str(dataset / "bert_config.json"),
                "--output-dir", str(tmp_path), "--train-batch-size", "2", "--max-seq-length", "64",
                "--max-predictions-per-seq", "10", "--num-train-steps", "2", "--num-warmup-steps", "2000"]) == 0
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000002"]
    # a warm-up longer than the run (the seed's phase 1 example) is accepted with a one-line note
    assert "note: the warm-up (2000 steps) is longer than the run (2 steps)" in capsys.readouterr().err
    # another run's checkpoints are not overwritten without --overwrite
    assert cli(["pretrain", *args(dataset, tmp_path, steps=2), "--learning_rate=5e-4"]) == 2
    assert "another run" in capsys.readouterr().err
    assert cli(["pretrain", *args(dataset, tmp_path, steps=2), "--learning_rate=5e-4", "--overwrite"]) == 0
    # the log holds the run that replaced the other, not both
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]  # before: [2, 1, 2]


def test_continued_pretraining_recipe_applies_only_without_a_learning_rate(dataset, tmp_path, capsys):
    """--init_checkpoint and no --learning_rate: the recipe's LAMB rate for the global batch and a
    short warm-up, printed and recorded in run.json; a rate given is that rate, with
    run_pretraining.py's warm-up, as before; neither: run_pretraining.py's defaults."""
    base = ["pretrain", "--input_files_dir", str(FIXTURES / "pretrain_seq128.tfrecord"), "--train_batch_size", "8",
            "--num_train_steps", "2", "--log_every", "1", "--peak_tflops", "0.1", "--device", "cpu"]
    init = ["--init_checkpoint", str(FIXTURES / "uncased_L-2_H-128_A-2.zip")]

    def ran(out, *more):
        assert cli([*base, "--output_dir", str(tmp_path / out), *more]) == 0
        settings = json.loads((tmp_path / out / "run.json").read_text())["settings"]
        first = json.loads((tmp_path / out / "log.jsonl").read_text().splitlines()[0])
        return capsys.readouterr().err, settings, first

    err, settings, first = ran("recipe", *init)
    lines = [line for line in err.splitlines() if line.startswith("recipe (continued pretraining")]
    assert len(lines) == 1 and "lamb learning rate 0.001 " in lines[0] and "warm-up 0 steps" in lines[0]
    lr = 2e-3 * (8 / 32) ** 0.5  # the recipe: 2e-3 at a global batch of 32, by the square root of the batch
    assert (settings["learning_rate"], settings["num_warmup_steps"], settings["schedule"]) == (
        pytest.approx(lr), 0, "continued-pretraining recipe")
    assert first["lr"] == pytest.approx(lr)  # the first step ran at the peak: no warm-up
    err, settings, _ = ran("adamw", *init, "--optimizer", "adamw", "--num_warmup_steps", "1")
    assert "adamw learning rate 0.00015 " in err and "warm-up 1 steps (given)" in err
    assert (settings["learning_rate"], settings["num_warmup_steps"]) == (pytest.approx(1.5e-4), 1)

    err, settings, first = ran("given", *init, "--learning_rate", "3e-3")
    assert "recipe" not in err and "warm-up (10000 steps) is longer than the run" in err
    assert (settings["learning_rate"], settings["num_warmup_steps"], settings["schedule"]) == (3e-3, 10000, "flags")
    assert first["lr"] == 0.0  # step 0 of a 10000-step warm-up, as run_pretraining.py does

    err, settings, _ = ran("scratch", "--bert_config_file", str(dataset / "bert_config.json"),
                           "--vocab_file", str(FIXTURES / "vocab_full.txt"))
    assert "recipe (" not in err and "run_pretraining.py's 5e-05, warm-up 10000 steps" in err
    assert (settings["learning_rate"], settings["num_warmup_steps"], settings["schedule"]) == (
        5e-5, 10000, "run_pretraining.py defaults")
