"""Every example command line of the seed document, read out of the document itself (never retyped)
and run to completion on the CPU: the `demo_bert.py` examples through `demo_bert`, the
`run_pretraining.py` / `run_classifier.py` / `run_squad.py` mpirun examples through `bertkit pretrain`
and `bertkit finetune mrpc|squad`.

`rewrite` is the one place where a line is changed to fit a CPU, mechanically:
- mpirun and its options go (one process); `bash -c "cd ...; CMD"` runs CMD;
- absolute paths ($HOME too) are re-rooted under a work folder laid out as the seed's machine: its
  dataset folders hold slices of the real MRPC and SQuAD files and the TensorFlow-written pretraining
  shards; `wwm_uncased_L-24_H-1024_A-16/` (relative, as the examples name it) holds the fixture's
  Google checkpoint (2 layers, hidden 128), so the low-level lines keep their model paths;
- demo_bert: `-m large` becomes `tiny` (whose Google checkpoint is that fixture, put in the model
  cache in place of the download), `-v N` becomes 1, the batch is small, pretraining runs 2 and 1
  steps toward a global batch of 2 and 1 sequences;
- the low-level lines keep their step counts and warm-up; batches become 2 sequences (1 at 512 tokens)
  without accumulation, so a fraction of an epoch of a few examples is a step or two.
Warm-ups longer than the run, `model.ckpt-100`, `.../bert_model.ckpt`, `--do_eval=True` on SQuAD
and `--dllog_path` are taken as written.
"""

import json
import os
import re
import shlex
import shutil
import zipfile
from pathlib import Path

import pytest

from bertkit.cli import demo_bert
from bertkit.cli import main as cli_main
from conftest import DATA, FIXTURES, SHARED

SEED = SHARED / "seed" / "000_f16346ebae23fa48.txt"
SCRIPTS = {"demo_bert.py": "demo", "run_pretraining.py": "pretrain", "run_classifier.py": "finetune",
           "run_squad.py": "finetune"}
GOOGLE_FOLDER = "wwm_uncased_L-24_H-1024_A-16"  # the name the low-level examples use


def seed_command_lines() -> list[tuple[str, list[str]]]:
    """(script, its arguments) of every example in the seed's bash blocks that runs one of SCRIPTS.
    Templates (`<command>`, `...`) are not examples and are left out."""
    text = SEED.read_text(encoding="utf-8")
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", "").splitlines():  # the shell's line continuations
            if not any(script in line for script in SCRIPTS):
                continue
            words = shlex.split(line)
            if "bash" in words and "-c" in words:  # mpirun ... bash -c "cd DIR; CMD"
                words = shlex.split(words[words.index("-c") + 1].split(";", 1)[1])
            words = words[:words.index("2>&1")] if "2>&1" in words else words
            at = next((i for i, w in enumerate(words) if Path(w).name in SCRIPTS), None)
            if at is None or at == 0 or words[at - 1] != "$PYTHON" or any("<" in w or w == "..." for w in words):
                continue
            found.append((Path(words[at]).name, words[at + 1:]))
    return found


def test_the_seed_holds_the_examples_we_expect():
    lines = seed_command_lines()
    counts = {s: sum(1 for name, _ in lines if name == s) for s in SCRIPTS}
    # demo_bert.py: --help, 3 single-card, 3 one-server, 2 32-card, 2 16-card, 3 K8s single-card,
    # 4 K8s mpirun (phase 1, phase 2, MRPC, SQuAD)
    assert counts == {"demo_bert.py": 18, "run_pretraining.py": 3, "run_classifier.py": 1, "run_squad.py": 2}


# ---- the one place where a seed line changes to fit a CPU ---------------------------------------

def split_flags(args: list[str]) -> list[list[str]]:
    """[[flag, value...], ...]: `--a=b` stays one word; a flag's value follows when it is no flag."""
    out = []
    for w in args:
        if w.startswith("-") and not re.fullmatch(r"-?\d+(\.\d+)?(e-?\d+)?", w):
            out.append([w])
        else:
            out[-1].append(w)
    return out


def name_of(item: list[str]) -> str:
    return item[0].split("=", 1)[0]


def value_of(item: list[str]) -> str | None:
    return item[0].split("=", 1)[1] if "=" in item[0] else (item[1] if len(item) > 1 else None)


DEMO_ALIASES = {"-c": "--command", "-d": "--data_type", "-m": "--model_variant", "-o": "--output_dir",
                "-v": "--use_horovod", "-t": "--test_set", "-e": "--epochs", "-s": "--max_seq_length",
                "-i": "--iters", "-w": "--warmup", "-b": "--batch_size", "-fpo": "--fast_perf_only"}


def rewrite(script: str, args: list[str], work: Path, example: int = 0) -> tuple[str, list[str]]:
    """The bertkit command and arguments that run a seed line here (see the module docstring). A
    demo_bert line without -o gets a folder of its own under the default /tmp/bert (the examples
    do not share one: MRPC and SQuAD runs would meet in it)."""
    if args == ["--help"]:
        return "demo", args
    def place(path: str) -> str:
        path = path.replace("$HOME", "/home")
        return str(work / path.lstrip("/")) if path.startswith("/") else path

    items = split_flags(args)
    flags = {DEMO_ALIASES.get(name_of(i), name_of(i)) if script == "demo_bert.py" else name_of(i): value_of(i)
             for i in items}
    if script == "demo_bert.py":
        pretraining = flags["--command"] == "pretraining"
        small = {"--model_variant": "tiny", "--use_horovod": "1", "--device": "cpu",
                 "--batch_size": "2,1" if pretraining else "4", "--output_dir": place(flags.get("--output_dir")
                                                                                     or f"/tmp/bert/{example}")}
        if pretraining:
            small.update({"--iters": "2,1", "--global_batch_size": "2,1"})
        elif flags["--test_set"] == "squad":
            small["--max_seq_length"] = "128"
    else:
        seq = int(flags.get("--max_seq_length", 128))
        small = {"--train_batch_size": "2" if seq <= 128 or script != "run_pretraining.py" else "1",
                 "--device": "cpu", "--log_every": "50"}
        if script == "run_pretraining.py":
            small["--num_accumulation_steps"] = "1"
    argv = []
    for item in items:
        name = DEMO_ALIASES.get(name_of(item), name_of(item)) if script == "demo_bert.py" else name_of(item)
        value = value_of(item)
        if name in small:
            continue
        argv += [name, place(value)] if value is not None else [name]
    for name, value in small.items():
        argv += [name, value]
    if script == "demo_bert.py":
        return "demo", argv
    task = {"run_classifier.py": ["mrpc"], "run_squad.py": ["squad"]}.get(script, [])
    return SCRIPTS[script], task + argv


# ---- the seed's machine, in a work folder --------------------------------------------------------

def first_rows(src: Path, dst: Path, rows: int) -> None:
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(lines[:rows + 1]), encoding="utf-8")


def squad_questions(article: int, n: int) -> dict:
    data = json.loads((DATA / "squad" / "dev-v1.1-even-articles.json").read_text())["data"][article]
    paragraph = dict(data["paragraphs"][0], qas=data["paragraphs"][0]["qas"][:n])
    return {"version": "1.1", "data": [{"title": data["title"], "paragraphs": [paragraph]}]}


def put(src: Path, *dsts: Path) -> None:
    for dst in dsts:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


@pytest.fixture(scope="module")
def machine(tmp_path_factory):
    work = tmp_path_factory.mktemp("seed_machine")
    data = work / "software" / "data" / "tf" / "data" / "bert"
    for split, rows in (("train", 16), ("dev", 8)):
        first_rows(DATA / "mrpc" / "glue" / f"{split}.tsv", data / "MRPC" / f"{split}.tsv", rows)
    for folder in (data / "SQuAD", work / "data"):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "train-v1.1.json").write_text(json.dumps(squad_questions(0, 4)))
        (folder / "dev-v1.1.json").write_text(json.dumps(squad_questions(1, 3)))
    # demo_bert's bookswiki layout (tiny variant: the full vocabulary) and the low-level lines' (the
    # fixture checkpoint's 2000-token vocabulary), each shard for training and test
    tfrecord = data / "books_wiki_en_corpus" / "tfrecord"
    for root, seq128 in ((tfrecord, "pretrain_seq128_fullvocab.tfrecord"), (work, "pretrain_seq128.tfrecord")):
        for seq, name in ((128, seq128), (512, "pretrain_seq512.tfrecord")):
            corpus = root / f"seq_len_{seq}" / "books_wiki_en_corpus"
            put(FIXTURES / name, corpus / "training" / "part-0.tfrecord", corpus / "test" / "part-0.tfrecord")
    with zipfile.ZipFile(FIXTURES / "uncased_L-2_H-128_A-2.zip") as z:
        z.extractall(work / "unzipped")
    (work / "unzipped" / "uncased_L-2_H-128_A-2").rename(work / GOOGLE_FOLDER)
    # Google's tiny checkpoint "downloaded" into the model cache, as demo_bert does once
    cache = work / "cache"
    assert cli_main(["convert", "--input", str(FIXTURES / "uncased_L-2_H-128_A-2.zip"),
                     "--output", str(cache / "models" / "uncased_L-2_H-128_A-2")]) == 0
    return work


@pytest.fixture
def at_machine(machine, monkeypatch):
    monkeypatch.chdir(machine)  # the low-level lines name their files relative to the bert folder
    saved = dict(os.environ)  # what a run sets for its workers stays in this test
    for name in ("MULTI_HLS_IPS", "RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"):
        os.environ.pop(name, None)
    yield machine
    os.environ.clear()
    os.environ.update(saved)


def run(command: str, argv: list[str]) -> int:
    return demo_bert(argv) if command == "demo" else cli_main([command, *argv])


# ---- the runs --------------------------------------------------------------------------------------

LOW_LEVEL = [(s, a) for s, a in seed_command_lines() if s != "demo_bert.py"]
DEMO = [(s, a) for s, a in seed_command_lines() if s == "demo_bert.py"]


def test_low_level_examples_run_as_written(at_machine, capsys):
    """The run_*.py examples in the seed's order: phase 1, phase 2 from phase_1/model.ckpt-100, MRPC
    and SQuAD from wwm_uncased_L-24_H-1024_A-16/bert_model.ckpt, phase 1 and SQuAD again (16 cards:
    the same runs, found complete)."""
    for script, args in LOW_LEVEL:
        command, argv = rewrite(script, args, at_machine)
        code = run(command, argv)
        err = capsys.readouterr().err
        assert code == 0, f"{script} {shlex.join(argv)}\n{err}"
        if "--num_warmup_steps=2000" in args and "resumed" not in err:
            assert "note: the warm-up (2000 steps) is longer than the run (100 steps)" in err
    root = at_machine / "root" / "tmp"
    assert (root / "pretraining" / "phase_1" / "ckpt-00000100").is_dir()
    assert (root / "pretraining" / "phase_2" / "ckpt-00000060").is_dir()
    for phase in ("phase_1", "phase_2"):
        lines = (root / "pretraining" / phase / "bert_dllog.json").read_text().splitlines()
        assert lines and all(line.startswith("DLLL {") for line in lines)
    assert (root / "mrpc_output" / "eval_results.txt").read_text().startswith("eval_accuracy = ")
    squad = json.loads((root / "squad_large" / "eval_results.json").read_text())  # --do_eval=True
    assert set(squad) >= {"exact_match", "f1"}
    assert (root / "squad_large" / "predictions.json").is_file()


@pytest.mark.parametrize("index", range(len(DEMO)), ids=lambda i: f"{i:02d}-" + "-".join(
    DEMO_ALIASES.get(name_of(x), name_of(x)).lstrip("-")[:4] + "=" + str(value_of(x))
    for x in split_flags(DEMO[i][1]) if DEMO_ALIASES.get(name_of(x), name_of(x)) in
    ("--command", "--test_set", "--use_horovod", "--kubernetes_run", "--run_phase2")))
def test_demo_bert_examples_run(index, at_machine, capsys, monkeypatch):
    script, args = DEMO[index]
    command, argv = rewrite(script, args, at_machine, index)
    if argv == ["--help"]:
        with pytest.raises(SystemExit) as done:
            run(command, argv)
        assert done.value.code == 0 and "--horovod_hierarchical_allreduce" in capsys.readouterr().out
        return
    finetuning = "finetuning" in argv
    if finetuning:  # a step that needs a download: first the plan, then the run with the fixture
        monkeypatch.setenv("BERTKIT_CACHE", str(at_machine / "empty_cache"))
        assert run(command, [*argv, "--dry_run"]) == 0
        plan = capsys.readouterr().out
        assert "<downloaded model>" in plan and "bertkit finetune" in plan
        monkeypatch.setenv("BERTKIT_CACHE", str(at_machine / "cache"))
    code = run(command, argv)
    err = capsys.readouterr().err
    assert code == 0, f"demo_bert {shlex.join(argv)}\n{err}"
    out = Path(argv[argv.index("--output_dir") + 1])
    if finetuning:
        assert (out / "eval_results.json").is_file() or (out / "predictions.json").is_file()
    else:
        assert list((out / "phase_2").glob("ckpt-*"))
