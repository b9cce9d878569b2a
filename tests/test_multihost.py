"""Several servers for real: two network namespaces joined by a veth pair stand for two servers
(needs root: `ip netns`), the launcher starts torchrun in each through `ip netns exec` in place of
ssh, and the run must equal the one-process run. Then the link is cut mid-run. And the same run
under OpenMPI's `mpirun -np 2` (installed from Debian's packages when absent)."""

import os
import random
import shutil
import subprocess
import sys
import threading
import time

import pytest

from bertkit import BertkitError, launcher
from bertkit.launcher.spawn import ssh_shell
from conftest import free_port
from launch_runs import assert_same_weights, overfit_argv, reference, shared


def ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def servers():
    """Two namespaces `<tag>a`, `<tag>b` with addresses 10.X.Y.1 and .2 on a veth pair whose ends
    are both named bk0 (so one MPI_TCP_INCLUDE names the interface on either server)."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2)")
    tag = f"bk{os.getpid() % 100000}"
    ns = (f"{tag}a", f"{tag}b")
    net = f"10.{200 + os.getpid() % 50}.{random.randrange(1, 250)}"
    addrs = (f"{net}.1", f"{net}.2")
    try:
        ip("netns", "add", ns[0])
        ip("netns", "add", ns[1])
        ip("link", "add", f"{tag}x", "type", "veth", "peer", "name", f"{tag}y")
        for n, end, addr in zip(ns, (f"{tag}x", f"{tag}y"), addrs):
            ip("link", "set", end, "netns", n)
            ip("-n", n, "link", "set", end, "name", "bk0")
            ip("-n", n, "addr", "add", f"{addr}/24", "dev", "bk0")
            ip("-n", n, "link", "set", "bk0", "up")
            ip("-n", n, "link", "set", "lo", "up")
    except subprocess.CalledProcessError as e:
        for n in ns:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
        pytest.skip(f"cannot make network namespaces here: {e.stderr.strip() or e}")
    yield dict(zip(addrs, ns))
    for n in ns:
        subprocess.run(["ip", "netns", "del", n], capture_output=True)


def in_namespace(servers):
    """The remote shell: `ip netns exec NS sh -c COMMAND` for the server at each address."""
    return lambda host, command: ["ip", "netns", "exec", servers[host], "sh", "-c", command]


@pytest.fixture
def two_server_env(monkeypatch, servers):
    monkeypatch.setenv("MULTI_HLS_IPS", ",".join(servers))
    monkeypatch.setenv("MPI_TCP_INCLUDE", "bk0")
    monkeypatch.setenv("MASTER_PORT", str(random.randrange(20000, 30000)))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_two_servers_equal_one_process(servers, two_server_env, tmp_path_factory, capsys):
    root = shared(tmp_path_factory)
    one = reference(tmp_path_factory)  # 1 process x accumulation 4
    out = root / "two_servers"
    assert launcher.main(overfit_argv(root, out) + ["-v", "1"], shell=in_namespace(servers)) == 0
    printed = capsys.readouterr()
    a, b = servers
    assert f"[{a}]" in printed.out and f"[{b}]" in printed.out  # each server's output, prefixed
    assert "4 x 2 accumulation x 2 worker(s)" in printed.err
    assert "on 2 process(es)" in printed.out
    assert_same_weights(one, out)


def test_cut_link_ends_the_run_within_the_timeout(servers, two_server_env, tmp_path_factory):
    root = shared(tmp_path_factory)
    out = root / "cut_link"
    timeout_s = 10
    argv = overfit_argv(root, out, steps=100000, timeout_s=timeout_s) + ["-v", "1"]
    outcome = {}

    def launch():
        try:
            outcome["rc"] = launcher.main(argv, shell=in_namespace(servers))
        except BertkitError as e:
            outcome["error"] = str(e)

    thread = threading.Thread(target=launch, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not ((out / "log.jsonl").is_file() and (out / "log.jsonl").read_text().strip()):
        assert thread.is_alive() and time.monotonic() < deadline, outcome or "the run did not start training"
        time.sleep(0.5)
    a, b = servers
    ip("-n", servers[b], "link", "set", "bk0", "down")  # the cable between the servers is pulled
    cut = time.monotonic()
    thread.join(timeout=timeout_s + 60)
    ended = time.monotonic() - cut
    assert not thread.is_alive(), "the launcher hung after the link was cut"
    ip("-n", servers[b], "link", "set", "bk0", "up")
    assert ended < timeout_s + 45, f"took {ended:.0f} s"
    error = outcome.get("error", "")
    assert "2 of 2 server(s) failed" in error, outcome
    # each server's torchrun ended by itself (exit status 1), on the workers' own timeout
    assert error.count("(exit status 1)") == 2 and "Timed out" in error and a in error and b in error
    assert f"{timeout_s * 1000}ms" in error  # --dist_timeout reached the workers' process group


def test_a_server_that_does_not_answer_fails_the_launch(servers, monkeypatch, tmp_path):
    """Real ssh, from the first server to an address on the link where nothing answers."""
    if shutil.which("ssh") is None:
        pytest.skip("no ssh client installed")
    a = next(iter(servers))
    silent = a.rsplit(".", 1)[0] + ".9"
    monkeypatch.setenv("MULTI_HLS_IPS", f"{a},{silent}")
    ssh = ssh_shell(3022, connect_timeout_s=3)
    shell = lambda host, command: ["ip", "netns", "exec", servers[a], *ssh(host, command)]  # noqa: E731
    started = time.monotonic()
    with pytest.raises(BertkitError) as e:
        launcher.main(["-c", "pretraining", "-t", "overfit", "-m", "tiny", "-d", "fp32", "-o", str(tmp_path)],
                      shell=shell)
    assert time.monotonic() - started < 15
    assert silent in str(e.value) and "timed out" in str(e.value)
    assert not (tmp_path / "dataset").exists()  # it failed before any work


@pytest.fixture(scope="module")
def mpirun():
    """OpenMPI's mpirun, installed from Debian's packages when absent."""
    found = shutil.which("mpirun")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        for cmd in (["apt-get", "install", "-y", "--no-install-recommends", "openmpi-bin"],
                    ["sh", "-c", "apt-get update && apt-get install -y --no-install-recommends openmpi-bin"]):
            try:
                subprocess.run(cmd, capture_output=True, timeout=600,
                               env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            except subprocess.TimeoutExpired:
                break
            found = shutil.which("mpirun")
            if found:
                break
    if found is None:
        pytest.skip("OpenMPI's mpirun is not installed and could not be installed (apt-get install openmpi-bin)")
    version = subprocess.run([found, "--version"], capture_output=True, text=True).stdout
    if "Open MPI" not in version:
        pytest.skip(f"{found} is not OpenMPI's mpirun")
    return found


def test_mpirun_ranks_from_openmpi(mpirun, tmp_path_factory):
    root = shared(tmp_path_factory)
    one = reference(tmp_path_factory)
    out = root / "mpirun"
    port = str(free_port())
    done = subprocess.run(
        [mpirun, "--allow-run-as-root", "--oversubscribe", "-np", "2", "-x", "MASTER_ADDR=127.0.0.1",
         "-x", f"MASTER_PORT={port}", "-x", "PATH", "-x", "OMP_NUM_THREADS=1",
         *bertkit_command(), "demo", *overfit_argv(root, out), "--use_horovod=1", "--kubernetes_run=True"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = done.stdout + done.stderr
    assert "on 2 process(es)" in text and "4 x 2 accumulation x 2 worker(s)" in text
    assert_same_weights(one, out)


def bertkit_command() -> list[str]:
    return [sys.executable, "-m", "bertkit"]
