"""The launcher (`bertkit demo` / `demo_bert`): the seed's demo_bert.py flags and defaults, the
bookswiki recipe's arithmetic, the bertkit command lines it builds, Kubernetes manifests, ssh
launches, -v N workers under torchrun, and the demo a new user runs first.

The expected numbers come from the seed: its `demo_bert.py --help` (quoted in the seed text) and
Habana's bert_pretraining_bookswiki_main.py / bert_pretraining_overfit_main.py, whose formulas are
restated in `seed_bookswiki` below."""

import json
import shlex
import time
from pathlib import Path

import pytest

from bertkit import BertkitError, launcher
from bertkit.launcher import paths, plans, recipes, seed_flags, steps, topology
from bertkit.cli import run as cli_run
from conftest import REPO
from launch_runs import assert_same_weights, bertkit, overfit_argv, reference, shared

# ---- 1. every flag of the seed's help -----------------------------------------------------------

# (short, long, value, destination, parsed value) for each option of `demo_bert.py --help`.
SEED_FLAGS = [
    ("-c", "--command", "pretraining", "command", "pretraining"),
    ("-d", "--data_type", "bf16", "data_type", "bf16"),
    ("-m", "--model_variant", "large", "model_variant", "large"),
    (None, "--bert-config-dir", "/cfg", "bert_config_dir", "/cfg"),
    (None, "--model", "bert", "model", "bert"),
    ("-o", "--output_dir", "/out", "output_dir", "/out"),
    ("-v", "--use_horovod", "8", "use_horovod", 8),
    ("-t", "--test_set", "bookswiki", "test_set", "bookswiki"),
    ("-e", "--epochs", "40", "epochs", 40.0),
    ("-s", "--max_seq_length", "128,512", "max_seq_length", "128,512"),
    ("-i", "--iters", "7038,1564", "iters", "7038,1564"),
    ("-w", "--warmup", "2000,200", "warmup", "2000,200"),
    ("-fpo", "--fast_perf_only", "1", "fast_perf_only", 1),
    (None, "--save_ckpt_steps", "100", "save_ckpt_steps", 100),
    (None, "--no_steps_accumulation", "1", "no_steps_accumulation", 1),
    ("-b", "--batch_size", "64,8", "batch_size", "64,8"),
    (None, "--learning_rate", "2e-5", "learning_rate", 2e-5),
    (None, "--dataset_path", "/data", "dataset_path", "/data"),
    (None, "--init_checkpoint_path", "/init", "init_checkpoint_path", "/init"),
    (None, "--checkpoint_folder", "/ckpt", "checkpoint_folder", "/ckpt"),
    (None, "--bf16_config_path", "/bf16.json", "bf16_config_path", "/bf16.json"),
    (None, "--kubernetes_run", "True", "kubernetes_run", True),
    (None, "--run_phase2", "True", "run_phase2", True),
    (None, "--enable_scoped_allocator", "True", "enable_scoped_allocator", True),
    (None, "--horovod_hierarchical_allreduce", "True", "horovod_hierarchical_allreduce", True),
]


@pytest.mark.parametrize("form", ["short", "long", "long="])
def test_every_seed_flag_is_accepted(form):
    argv = []
    for short, long, value, _, _ in SEED_FLAGS:
        if form == "short" and short:
            argv += [short, value]
        elif form == "long=":
            argv += [f"{long}={value}"]
        else:
            argv += [long, value]
    args = seed_flags.parser().parse_args(argv)
    for _, long, _, dest, want in SEED_FLAGS:
        assert getattr(args, dest) == want, long


def test_seed_booleans_mean_what_they_say():
    # The seed declared these type=bool, so its `--kubernetes_run=False` meant True; here it is False.
    args = seed_flags.parser().parse_args(["--kubernetes_run=False", "--run_phase2", "false"])
    assert args.kubernetes_run is False and args.run_phase2 is False


def test_bad_values_name_the_flag():
    with pytest.raises(BertkitError, match="--model"):
        seed_flags.parser().parse_args(["--model", "gpt"])
    args = seed_flags.parser().parse_args(["-c", "pretraining", "-d", "fp32", "-m", "tiny", "-i", "100,x"])
    with pytest.raises(BertkitError, match="--iters"):
        recipes.settings(args, 1)
    args = seed_flags.parser().parse_args(["-c", "finetuning", "-d", "fp32", "-m", "tiny", "-t", "bookswiki"])
    with pytest.raises(BertkitError, match="-t bookswiki"):
        recipes.settings(args, 1)


# ---- the seed's defaults, table-driven ----------------------------------------------------------

def seed_bookswiki(world, b1, b2, i1, i2, fast_perf_only=0):
    """The seed's bert_pretraining_bookswiki_main.py, restated: accumulation, global batch, phase-2
    steps and the learning rate run_pretraining.py ends up with (its --learning_rate x workers)."""
    gbs1, gbs2 = (1600, 200) if fast_perf_only else (65536, 32768)
    acc1, acc2 = int(gbs1 / world / b1), int(gbs2 / world / b2)
    if not fast_perf_only:
        i2 = int((i2 * b1 * acc1) / (b2 * acc2))
    lr1 = 0.00075 * (8 / world) * (gbs1 / 65536) * world
    lr2 = 0.0005 * (8 / world) * (gbs2 / 32768) * world
    return acc1, acc2, i1, i2, lr1, lr2


# (command, test_set, data_type) -> the seed's --help defaults
DEFAULTS = {
    ("pretraining", "bookswiki", "bf16"): dict(batch=(64, 8), seq=(128, 512), iters=(7038, 782), warmup=(2000, 200)),
    ("pretraining", "bookswiki", "fp32"): dict(batch=(32, 8), seq=(128, 512), iters=(7038, 782), warmup=(2000, 200)),
    ("pretraining", "overfit", "bf16"): dict(batch=(32,), seq=(128,), iters=(200,), warmup=(10,)),
    ("pretraining", "overfit", "fp32"): dict(batch=(32,), seq=(128,), iters=(200,), warmup=(10,)),
    ("finetuning", "mrpc", "bf16"): dict(batch=64, seq=128, epochs=3.0, lr=2e-5),
    ("finetuning", "mrpc", "fp32"): dict(batch=32, seq=128, epochs=3.0, lr=2e-5),
    ("finetuning", "squad", "bf16"): dict(batch=24, seq=384, epochs=2.0, lr=2e-5),
    ("finetuning", "squad", "fp32"): dict(batch=10, seq=384, epochs=2.0, lr=2e-5),
}


@pytest.mark.parametrize("world", [1, 8, 32])
@pytest.mark.parametrize("key", list(DEFAULTS), ids=lambda k: "-".join(k))
def test_resolved_settings_are_the_seeds_defaults(key, world):
    command, test_set, dtype = key
    want = DEFAULTS[key]
    args = seed_flags.parser().parse_args(["-c", command, "-t", test_set, "-d", dtype, "-m", "large"])
    s = recipes.settings(args, world)
    assert (s.command, s.test_set, s.data_type, s.world_size) == (command, test_set, dtype, world)
    if command == "finetuning":
        ft = s.finetune
        assert (ft.batch_size, ft.max_seq_length, ft.epochs, ft.learning_rate) == (
            want["batch"], want["seq"], want["epochs"], want["lr"])
        assert not s.phases
        return
    phases = s.phases
    assert tuple(p.batch_size for p in phases) == want["batch"]
    assert tuple(p.max_seq_length for p in phases) == want["seq"]
    assert tuple(p.warmup for p in phases) == want["warmup"]
    assert tuple(p.max_predictions_per_seq for p in phases) == ((20, 80) if test_set == "bookswiki" else (20,))
    if test_set == "overfit":
        (p,) = phases
        assert (p.steps, p.accumulation) == (200, 1)
        assert p.learning_rate == pytest.approx(0.006 * 32 * world / 65536)  # the overfit script's base_lr formula
        return
    acc1, acc2, i1, i2, lr1, lr2 = seed_bookswiki(world, *want["batch"], *want["iters"])
    p1, p2 = phases
    assert (p1.accumulation, p2.accumulation, p1.steps, p2.steps) == (acc1, acc2, i1, i2)
    assert (p1.learning_rate, p2.learning_rate) == (pytest.approx(lr1), pytest.approx(lr2))
    # NVIDIA's recipe: 65536 then 32768 sequences per step, peak rates 6e-3 and 4e-3, 1564 phase-2 steps
    assert (p1.global_batch, p2.global_batch, p2.steps) == (65536, 32768, 1564)
    assert (p1.learning_rate, p2.learning_rate) == (pytest.approx(6e-3), pytest.approx(4e-3))


@pytest.mark.parametrize("flags,world", [
    (["--fast_perf_only=1"], 8),
    (["--fast_perf_only=1"], 1),
    (["-b", "48,6", "-i", "100,50"], 8),
    (["--iters=7038,1564", "--batch_size=64,8"], 8),  # the seed's README command line
    (["-b", "16"], 2),  # one value: phase 2 keeps its default batch
])
def test_bookswiki_arithmetic_is_the_seeds(flags, world):
    args = seed_flags.parser().parse_args(["-c", "pretraining", "-d", "bf16", "-m", "large", *flags])
    p1, p2 = recipes.settings(args, world).phases
    fpo = int("--fast_perf_only=1" in flags)
    b = recipes.values(args.batch_size, "batch_size", 2) or (64, 8)
    i = recipes.values(args.iters, "iters", 2) or (7038, 782)
    acc1, acc2, i1, i2, lr1, lr2 = seed_bookswiki(world, b[0], b[1] if len(b) > 1 else 8, i[0], i[1], fpo)
    assert (p1.accumulation, p2.accumulation, p1.steps, p2.steps) == (acc1, acc2, i1, i2)
    assert (p1.learning_rate, p2.learning_rate) == (pytest.approx(lr1), pytest.approx(lr2))


def test_no_steps_accumulation_and_explicit_learning_rate():
    args = seed_flags.parser().parse_args(["-c", "pretraining", "-d", "bf16", "-m", "large",
                                         "--no_steps_accumulation=1"])
    p1, p2 = recipes.settings(args, 8).phases
    assert (p1.accumulation, p2.accumulation) == (1, 1)
    assert (p1.global_batch, p2.global_batch) == (512, 64)
    assert p2.steps == 782 * 64 // 8  # phase 2 sees as many sequences as 782 phase-1 steps
    assert p1.learning_rate == pytest.approx(6e-3 * 512 / 65536)
    args = seed_flags.parser().parse_args(["-c", "pretraining", "-d", "bf16", "-m", "large", "--learning_rate", "1e-3"])
    assert {p.learning_rate for p in recipes.settings(args, 8).phases} == {1e-3}


# ---- the bertkit command lines, read back by the commands' own parsers -------------------------

def test_pretrain_command_lines_carry_the_phase(tmp_path):
    from bertkit.tasks import pretrain

    data = tmp_path / "data"
    for seq in (128, 512):
        (data / f"seq_len_{seq}" / "books_wiki_en_corpus" / "training").mkdir(parents=True)
    args = seed_flags.parser().parse_args(["-c", "pretraining", "-d", "bf16", "-m", "large", "--dataset_path", str(data),
                                         "-o", str(tmp_path / "out"), "--save_ckpt_steps", "50"])
    topo = topology.Topology("torchrun", 8, world_size=8)
    s = recipes.settings(args, 8)
    steps = plans.pretraining_steps(args, s, topo)
    assert len(steps) == 2
    for step, phase, name in zip(steps, s.phases, ("phase_1", "phase_2")):
        assert step.argv[0] == "pretrain"
        a = pretrain.parser().parse_args(step.argv[1:])
        assert (a.train_batch_size, a.num_accumulation_steps, a.num_train_steps, a.num_warmup_steps,
                a.max_seq_length, a.max_predictions_per_seq, a.save_checkpoints_steps, a.precision) == (
            phase.batch_size, phase.accumulation, phase.steps, phase.warmup, phase.max_seq_length,
            phase.max_predictions_per_seq, 50, "bf16")
        assert a.learning_rate == pytest.approx(phase.learning_rate)
        assert a.bert_config_file == "large"
        assert Path(a.output_dir) == (tmp_path / "out" / name).resolve()
        assert Path(a.input_files_dir) == (data / f"seq_len_{phase.max_seq_length}" / "books_wiki_en_corpus" /
                                           "training").resolve()
    a2 = pretrain.parser().parse_args(steps[1].argv[1:])
    assert Path(a2.init_checkpoint) == (tmp_path / "out" / "phase_1" / "ckpt-00007038").resolve()


def test_bertkit_data_layout_is_found(tmp_path):
    (tmp_path / "seq_len_128" / "wikicorpus_en" / "training").mkdir(parents=True)
    (tmp_path / "seq_len_128" / "wikicorpus_en" / "test").mkdir(parents=True)
    train, test = paths.find_phase_data(tmp_path, 128)
    assert (train.name, test.name, train.parent.name) == ("training", "test", "wikicorpus_en")
    with pytest.raises(BertkitError, match="seq_len_512"):
        paths.find_phase_data(tmp_path, 512)


@pytest.mark.parametrize("task", ["mrpc", "squad"])
def test_finetune_command_lines_carry_the_settings(task, tmp_path):
    from bertkit.tasks import finetune

    model = tmp_path / "model"
    model.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.tsv", "dev.tsv", "train-v1.1.json", "dev-v1.1.json"):
        (data / name).write_text("")
    args = seed_flags.parser().parse_args(["-c", "finetuning", "-t", task, "-d", "bf16", "-m", "large",
                                         "--checkpoint_folder", str(model), "--dataset_path", str(data),
                                         "-o", str(tmp_path / "out"), "-e", "0.5"])
    s = recipes.settings(args, 8)
    (step,) = plans.finetuning_steps(args, s, topology.Topology("torchrun", 8, world_size=8))
    assert step.argv[:2] == ["finetune", task]
    parsed_task, rest = finetune.split_task(step.argv[1:])
    module = __import__(f"bertkit.tasks.finetune.{parsed_task}", fromlist=["parser"])
    a = module.parser().parse_args(rest)
    ft = s.finetune
    assert (a.train_batch_size, a.max_seq_length, a.num_train_epochs, a.learning_rate, a.precision) == (
        ft.batch_size, ft.max_seq_length, 0.5, 2e-5, "bf16")
    assert Path(a.init_checkpoint) == model.resolve() and a.do_train
    if task == "mrpc":
        assert a.do_eval and Path(a.data_dir) == data.resolve()
    else:
        assert a.do_predict and a.doc_stride == 128
        assert Path(a.train_file) == data.resolve() / "train-v1.1.json"
        assert Path(a.predict_file) == data.resolve() / "dev-v1.1.json"


# ---- --run_phase2 -------------------------------------------------------------------------------

def test_run_phase2_stops_without_phase1_checkpoint(tmp_path, capsys):
    data = tmp_path / "data"
    for seq in (128, 512):
        (data / f"seq_len_{seq}" / "books_wiki_en_corpus" / "training").mkdir(parents=True)
    argv = ["-c", "pretraining", "-d", "fp32", "-m", "tiny", "--dataset_path", str(data), "-i", "5,5",
            "-o", str(tmp_path / "out"), "--kubernetes_run=True", "--use_horovod=1", "--run_phase2=True"]
    assert cli_run(launcher.main, argv, prog="demo_bert") == 2
    err = capsys.readouterr().err
    assert "phase 1's last checkpoint" in err and "ckpt-00000005" in err and "--run_phase2" in err
    assert not (tmp_path / "out" / "phase_2").exists()  # nothing started


def test_run_phase2_finds_phase1_last_checkpoint(tmp_path):
    from bertkit.checkpoint import save_training
    from bertkit.config import variant
    from bertkit.data.bundled import vocab_path
    from bertkit.model import BertForPreTraining

    phase1 = recipes.Phase("phase_1", 128, 20, 4, 1, 5, 1, 1e-3, 1)
    with pytest.raises(BertkitError):
        paths.check_phase1_done(tmp_path, phase1)
    config = variant("tiny")
    state = BertForPreTraining(config).state_dict()
    save_training(tmp_path / "phase_1", 4, config, state, vocab_path(), True, {}, {})
    with pytest.raises(BertkitError, match="ckpt-00000005"):  # a checkpoint, but not the last step's
        paths.check_phase1_done(tmp_path, phase1)
    save_training(tmp_path / "phase_1", 5, config, state, vocab_path(), True, {}, {})
    assert paths.check_phase1_done(tmp_path, phase1) == tmp_path / "phase_1" / "ckpt-00000005"


def test_dist_timeout_comes_from_the_flag_or_the_environment(monkeypatch):
    from bertkit.distributed import dist_timeout

    args = seed_flags.parser().parse_args([])
    assert steps.timeout_of(args) == 600
    monkeypatch.setenv("BERTKIT_DIST_TIMEOUT", "45")
    assert steps.timeout_of(args) == 45 == dist_timeout()
    assert steps.timeout_of(seed_flags.parser().parse_args(["--dist_timeout", "7"])) == 7
    monkeypatch.setenv("BERTKIT_DIST_TIMEOUT", "soon")
    with pytest.raises(BertkitError, match="BERTKIT_DIST_TIMEOUT"):
        dist_timeout()


# ---- TensorFlow/Horovod knobs --------------------------------------------------------------------

def test_tensorflow_knobs_say_once_they_do_not_apply(tmp_path, capsys):
    argv = ["-c", "pretraining", "-d", "fp32", "-m", "tiny", "-t", "overfit", "-o", str(tmp_path),
            "--enable_scoped_allocator=True", "--horovod_hierarchical_allreduce=True", "--dry_run"]
    assert launcher.main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("--enable_scoped_allocator") == 1 and err.count("--horovod_hierarchical_allreduce") == 1
    assert "no effect" in err
    assert launcher.main(argv[:-3] + ["--dry_run"]) == 0
    assert "no effect" not in capsys.readouterr().err


# ---- several servers: the per-server commands, and servers that cannot be reached ---------------

def test_multi_server_commands(monkeypatch, tmp_path):
    monkeypatch.setenv("MULTI_HLS_IPS", "10.1.0.1,10.1.0.2")
    monkeypatch.setenv("DOCKER_SSHD_PORT", "4022")
    monkeypatch.setenv("MPI_TCP_INCLUDE", "eno1")
    monkeypatch.setenv("MASTER_PORT", "29777")
    args = seed_flags.parser().parse_args(["-c", "pretraining", "-d", "fp32", "-m", "tiny", "-t", "overfit",
                                         "-v", "8", "-o", str(tmp_path), "--dist_timeout", "90"])
    topo = topology.detect(args)
    assert (topo.mode, topo.world_size, topo.hosts) == ("hosts", 16, ["10.1.0.1", "10.1.0.2"])
    step = steps.Step("x", ["pretrain", "--output_dir", str(tmp_path)])
    cmds = steps.commands(step, topo, args)
    assert [h for h, _ in cmds] == ["10.1.0.1", "10.1.0.2"]
    for rank, (host, argv) in enumerate(cmds):
        assert argv[:3] == ["ssh", "-p", "4022"] and "ConnectTimeout=10" in argv and "BatchMode=yes" in argv
        assert argv[-2] == host
        remote = argv[-1]
        assert "GLOO_SOCKET_IFNAME=eno1" in remote and "NCCL_SOCKET_IFNAME=eno1" in remote
        assert "BERTKIT_DIST_TIMEOUT=90" in remote
        torchrun = shlex.split(remote[remote.index("env "):].split(" </dev/null")[0])
        i = torchrun.index("torch.distributed.run")
        opts = dict(zip(torchrun[i + 1::2], torchrun[i + 2::2]))
        assert (opts["--nnodes"], opts["--node_rank"], opts["--nproc_per_node"], opts["--master_addr"],
                opts["--master_port"], opts["--rdzv_backend"]) == ("2", str(rank), "8", "10.1.0.1", "29777", "static")
        assert torchrun[-4:] == ["bertkit", "pretrain", "--output_dir", str(tmp_path)]
    monkeypatch.setenv("MPI_TCP_INCLUDE", "192.10.100.0/24")
    with pytest.raises(BertkitError, match="interface names"):
        steps.commands(step, topo, args)


def test_unreachable_servers_are_named(monkeypatch, tmp_path):
    """Real ssh to servers that refuse the connection: the launch fails at once, naming each."""
    import shutil

    if shutil.which("ssh") is None:
        pytest.skip("no ssh client installed")
    monkeypatch.setenv("MULTI_HLS_IPS", "127.0.0.1,127.0.0.2")
    monkeypatch.setenv("DOCKER_SSHD_PORT", "1")  # nothing listens there
    started = time.monotonic()
    with pytest.raises(BertkitError) as e:
        launcher.main(["-c", "pretraining", "-t", "overfit", "-m", "tiny", "-d", "fp32", "-o", str(tmp_path)])
    assert time.monotonic() - started < 20
    assert "127.0.0.1" in str(e.value) and "127.0.0.2" in str(e.value) and "port 1" in str(e.value)
    assert not (tmp_path / "dataset").exists()  # it failed before any work


def test_a_silent_server_fails_within_the_bound():
    from bertkit.launcher.spawn import check_reachable

    shell = lambda host, cmd: ["sleep", "30"] if host == "silent" else ["true"]  # noqa: E731
    started = time.monotonic()
    with pytest.raises(BertkitError, match="silent .no answer within 2 s"):
        check_reachable(["ok", "silent"], shell, timeout_s=2)
    assert time.monotonic() - started < 10


def test_when_one_server_fails_the_others_are_stopped_after_the_grace():
    """Through the real remote command: closing its stdin makes the server's side send SIGTERM."""
    from bertkit.launcher.spawn import remote_command, run_hosts

    sh = lambda cmd: ["sh", "-c", cmd]  # noqa: E731
    commands = [("bad", sh(remote_command(["sh", "-c", "echo 'ValueError: broken here'; exit 3"], {}, "/"))),
                ("slow", sh(remote_command(["sleep", "120"], {"A": "1"}, "/")))]
    lines = []

    class Out:
        write = lines.append

        def flush(self):
            pass

    started = time.monotonic()
    with pytest.raises(BertkitError) as e:
        run_hosts(commands, grace_s=1, out=Out())
    assert time.monotonic() - started < 20
    assert "2 of 2 server(s) failed" in str(e.value)
    assert "bad (exit status 3): ValueError: broken here" in str(e.value)
    assert "slow (exit status 143)" in str(e.value)  # 128 + SIGTERM, sent by its own side
    assert "[bad ] ValueError: broken here\n" in lines


# ---- 2. -v 2: two workers under torchrun equal one worker with twice the accumulation -----------

def test_two_workers_equal_one_with_twice_the_accumulation(tmp_path_factory):
    root = shared(tmp_path_factory)
    one = reference(tmp_path_factory)  # accumulation 4
    two = root / "two_workers"
    done = bertkit("demo", *overfit_argv(root, two), "-v", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "4 x 2 accumulation x 2 worker(s)" in done.stderr  # what the launcher resolved
    assert "on 2 process(es)" in done.stderr  # what pretrain saw: two ranks (gloo on CPU)
    assert_same_weights(one, two)
    results = json.loads((two / "results.json").read_text())
    assert results["eval_mlm_accuracy"] >= 0 and results["step"] == 3


# ---- Kubernetes manifests ------------------------------------------------------------------------

MOUNTS = {"datasets": "/software/data/tf/data", "outputs": "/root/tmp", "logs": "/root/hlogs"}


def invocations(text: str) -> list[list[str]]:
    """The flags of each `bertkit demo` in a shell command."""
    words = shlex.split(text)
    found = []
    for i in range(len(words) - 1):
        if words[i] == "bertkit" and words[i + 1] == "demo":
            rest = []
            for w in words[i + 2:]:
                if w in ("2>&1", "|", "&&", ";") or w.startswith(("2>", "|")):
                    break
                rest.append(w)
            found.append(rest)
    return found


def pods(doc: dict) -> dict:
    specs = doc["spec"].get("pytorchReplicaSpecs") or doc["spec"]["mpiReplicaSpecs"]
    return {role: spec["template"]["spec"] for role, spec in specs.items()}


def test_kubernetes_manifests_parse_and_carry_the_launchers_flags():
    yaml = pytest.importorskip("yaml", reason="PyYAML (the test extra) reads the manifests")
    folder = REPO / "deploy" / "kubernetes"
    docs = [(f.name, d) for f in sorted(folder.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())]
    jobs = [(name, d) for name, d in docs if d["kind"] in ("PyTorchJob", "MPIJob")]
    assert {d["kind"] for _, d in jobs} == {"PyTorchJob", "MPIJob"}
    claims = {d["metadata"]["name"] for _, d in docs if d["kind"] == "PersistentVolumeClaim"}
    commands_seen = set()
    for name, job in jobs:
        specs = pods(job)
        runner = specs.get("Launcher") or specs["Master"]
        training = specs.get("Worker") if job["kind"] == "MPIJob" else runner
        (container,) = runner["containers"]
        text = " ".join(container["command"][2:] + container.get("args", []))
        runs = invocations(text)
        assert runs, name
        mounts = {m["mountPath"]: m["name"] for c in training["containers"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in training["volumes"]}
        for path, vol in mounts.items():
            if "persistentVolumeClaim" in volumes[vol]:
                assert volumes[vol]["persistentVolumeClaim"]["claimName"] in claims
        if job["kind"] == "PyTorchJob":
            assert "torchrun -m bertkit demo" in text
            world = int(job["spec"]["nprocPerNode"]) * sum(
                s.get("replicas", 1) for s in job["spec"]["pytorchReplicaSpecs"].values())
        else:
            assert "mpirun" in text and "-x MASTER_ADDR" in text
            world = int(job["spec"]["slotsPerWorker"]) * job["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"]
            assert f"-np {world}" in text
        for argv in runs:
            args = seed_flags.parser().parse_args(argv)
            assert args.kubernetes_run is True and args.use_horovod == 1, name
            s = recipes.settings(args, world)
            commands_seen.add((s.command, s.test_set))
            for flag_ in ("output_dir", "dataset_path", "checkpoint_folder"):
                path = getattr(args, flag_)
                if path:
                    want = MOUNTS["outputs"] if flag_ == "output_dir" else MOUNTS["datasets"]
                    assert path.startswith(want + "/") and want in mounts, (name, flag_)
            if s.command == "pretraining":
                assert s.phases[0].global_batch == 65536 and s.phases[1].global_batch == 32768
        for log in [w for w in shlex.split(text) if w.startswith(MOUNTS["logs"])]:
            assert any(m == MOUNTS["logs"] for c in runner["containers"] for m in
                       (v["mountPath"] for v in c["volumeMounts"])), name
        if any(a for a in runs if "--run_phase2=True" in a):
            first, second = runs
            assert second == first + ["--run_phase2=True"], name  # the seed: the same flags, plus run_phase2
    assert commands_seen >= {("pretraining", "bookswiki"), ("finetuning", "squad"), ("finetuning", "mrpc")}


# ---- 5. the README's first command, as a new user runs it ---------------------------------------

def test_readme_first_command_is_bertkit_demo():
    readme = (REPO / "README.md").read_text()
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    first_command = [line for line in first_block.splitlines() if line.strip() and not line.startswith("#")][0]
    assert first_command.rstrip().endswith("bertkit demo")


def test_demo_runs_from_an_empty_directory(tmp_path):
    """`bertkit demo` in a fresh directory: no download, bundled data, scores printed at the end.
    --quick is the same demo with fewer steps (the full one is timed by hand; see the report)."""
    work = tmp_path / "fresh"
    work.mkdir()
    done = bertkit("demo", "--quick", cwd=work, timeout=400, env={
        "BERTKIT_CACHE": str(tmp_path / "cache"), "HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = work / "bertkit-demo"
    results = json.loads((out / "mrpc" / "eval_results.json").read_text())
    assert results["examples"] == 200  # the bundled dev sample
    assert f"accuracy {results['accuracy']:.3f}, F1 {results['f1']:.3f}" in done.stdout
    assert "majority class: accuracy 0.685, F1 0.813" in done.stdout  # 137 of 200 dev pairs are paraphrases
    assert str(out) in done.stdout
    assert "[1/2] pretraining" in done.stderr and "[2/2] fine-tuning" in done.stderr
    assert list((out / "pretrain").glob("ckpt-*")) and (out / "data" / "manifest.json").is_file()
    assert not (tmp_path / "cache").exists()  # nothing downloaded
