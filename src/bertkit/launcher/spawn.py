"""Starting bertkit's workers: in this process, under torchrun on this server, or under torchrun on
every server of `MULTI_HLS_IPS` over ssh. Only subprocess and threads: torchrun starts and watches
the workers on each server; this module starts torchrun and streams its output.

Several servers use torchrun's static rendezvous at the first server (`--master_addr HOST0
--node_rank I`), not its c10d rendezvous: the c10d agents poll their store every monitor interval,
and a store call on a dead link blocks in a receive with no timeout (TCPStore's cancel-wait,
pytorch/pytorch#100594), so a cut link hung both agents here for as long as we watched (over ten
minutes) after their workers had failed. Static agents touch the store only at start and at a
successful end, so a worker that fails on its process-group timeout ends its torchrun with it.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, TextIO

from bertkit import BertkitError

SSH_CONNECT_TIMEOUT_S = 10  # a server that does not answer fails the launch after this long
DEFAULT_SSH_PORT = 3022  # the seed's docker sshd port (DOCKER_SSHD_PORT)
DEFAULT_MASTER_PORT = 29500  # torchrun's default

# Environment forwarded to every server: what bertkit, torch, gloo and NCCL read.
FORWARD_PREFIXES = ("BERTKIT_", "NCCL_", "GLOO_", "TORCH_", "OMP_", "HF_")
FORWARD_NAMES = ("PYTHONPATH", "CUDA_VISIBLE_DEVICES", "MASTER_PORT")

# (host, remote shell command) -> argv that runs the command on that host.
RemoteShell = Callable[[str, str], list[str]]


def ssh_shell(port: int, connect_timeout_s: int = SSH_CONNECT_TIMEOUT_S) -> RemoteShell:
    """Password-less ssh as the seed sets it up (keys exchanged, hosts in known_hosts). BatchMode
    makes a missing key an error rather than a password prompt; ServerAlive ends a session whose
    server stops answering."""
    def argv(host: str, command: str) -> list[str]:
        return ["ssh", "-p", str(port), "-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout_s}",
                "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3", host, command]
    return argv


def hosts_from_env(env: dict | None = None) -> list[str]:
    """The servers of MULTI_HLS_IPS (comma-separated), or [] for this server alone."""
    env = os.environ if env is None else env
    text = env.get("MULTI_HLS_IPS", "").strip()
    hosts = [h.strip() for h in text.split(",") if h.strip()]
    if len(set(hosts)) != len(hosts):
        raise BertkitError(f"MULTI_HLS_IPS={text!r} names a server twice")
    return hosts


def socket_ifname(env: dict | None = None) -> str | None:
    """MPI_TCP_INCLUDE as gloo/NCCL interface names (GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME).
    OpenMPI also takes subnets there; gloo and NCCL take only interface names."""
    env = os.environ if env is None else env
    text = env.get("MPI_TCP_INCLUDE", "").strip()
    if not text:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if "/" in name or name.replace(".", "").isdigit():
            raise BertkitError(f"MPI_TCP_INCLUDE={text!r}: bertkit gives it to gloo and NCCL, which take "
                               f"network interface names (eno1, eth0), not subnets or addresses ({name!r})")
    return ",".join(names)


def forwarded_env(env: dict | None = None) -> dict[str, str]:
    env = os.environ if env is None else env
    return {k: v for k, v in sorted(env.items()) if k in FORWARD_NAMES or k.startswith(FORWARD_PREFIXES)}


def torchrun_argv(task_argv: list[str], nproc: int, nnodes: int = 1, node_rank: int = 0,
                  master: str | None = None, port: int = DEFAULT_MASTER_PORT, timeout_s: float = 600,
                  python: str = sys.executable) -> list[str]:
    """torchrun running `bertkit TASK_ARGV...` with `nproc` workers on this server; with `master`,
    one server of `nnodes` joined by static rendezvous at master:port."""
    argv = [python, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--max_restarts", "0"]
    if master is None:
        argv += ["--standalone"]
    else:
        argv += ["--nnodes", str(nnodes), "--node_rank", str(node_rank), "--rdzv_backend", "static",
                 "--master_addr", master, "--master_port", str(port), "--rdzv_conf", f"timeout={int(timeout_s)}"]
    return argv + ["-m", "bertkit", *task_argv]


def remote_command(argv: list[str], env: dict[str, str], cwd: str) -> str:
    """The shell command a server runs: `argv` in `cwd` with `env`, ended when the launcher goes away.
    The launcher holds the command's stdin open; when it closes (the launcher stops it, exits or
    dies), the watcher sends SIGTERM, which torchrun passes to the workers (they save and stop)."""
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    run = f"env {assignments} {shlex.join(argv)}" if assignments else shlex.join(argv)
    # A background job's stdin is /dev/null, so the watcher reads the real stdin through fd 3.
    return (f"cd {shlex.quote(cwd)} || exit 2; exec 3<&0; {run} </dev/null & pid=$!; "
            f"(read _ <&3; kill -TERM $pid) >/dev/null 2>&1 & w=$!; "
            f"wait $pid; rc=$?; kill $w 2>/dev/null; exit $rc")


@dataclass
class HostRun:
    """One server's torchrun as the launcher sees it."""

    host: str
    argv: list[str]  # what runs here: the remote shell with the command
    process: subprocess.Popen | None = None
    tail: list[str] = field(default_factory=list)  # its last lines, for the error message
    returncode: int | None = None


def check_reachable(hosts: list[str], shell: RemoteShell, timeout_s: float) -> None:
    """Run `true` on every server at once; name those that do not answer within `timeout_s`."""
    runs = [(h, subprocess.Popen(shell(h, "true"), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)) for h in hosts]
    failed = []
    deadline = time.monotonic() + timeout_s
    for host, proc in runs:
        try:
            out, _ = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            failed.append(f"{host} (no answer within {timeout_s:.0f} s)")
            continue
        if proc.returncode != 0:
            last = (out.strip().splitlines() or ["exit status %d" % proc.returncode])[-1]
            failed.append(f"{host} ({last.strip()})")
    if failed:
        raise BertkitError(f"cannot reach {len(failed)} of {len(hosts)} server(s) of MULTI_HLS_IPS: "
                           + "; ".join(failed))


def run_hosts(commands: list[tuple[str, list[str]]], grace_s: float, out: TextIO | None = None) -> None:
    """Run one command per server, printing each output line as `[host] line`. When one fails, the
    others get `grace_s` seconds to end by themselves (their process-group timeout), then are
    stopped. Raises BertkitError naming each failed server and its last error line."""
    out = out or sys.stdout
    lock = threading.Lock()
    runs = [HostRun(host, argv) for host, argv in commands]
    width = max(len(r.host) for r in runs)

    def pump(run: HostRun) -> None:
        for line in run.process.stdout:
            line = line.rstrip("\n")
            run.tail = (run.tail + [line])[-100:]
            with lock:
                out.write(f"[{run.host:<{width}}] {line}\n")
                out.flush()

    threads = []
    for run in runs:
        run.process = subprocess.Popen(run.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, bufsize=1)
        t = threading.Thread(target=pump, args=(run,), daemon=True)
        t.start()
        threads.append(t)
    first_failure = None
    try:
        while any(r.returncode is None for r in runs):
            for run in runs:
                if run.returncode is None and run.process.poll() is not None:
                    run.returncode = run.process.returncode
                    if run.returncode != 0 and first_failure is None:
                        first_failure = time.monotonic()
            if first_failure is not None and time.monotonic() - first_failure > grace_s:
                for run in runs:
                    if run.returncode is None:
                        _stop(run)
            time.sleep(0.1)
    finally:  # interrupted (Ctrl-C): stop every server's run
        for run in runs:
            if run.process.poll() is None:
                _stop(run)
    for t in threads:
        t.join(timeout=5)
    failed = [r for r in runs if r.returncode != 0]
    if failed:
        raise BertkitError(f"{len(failed)} of {len(runs)} server(s) failed: " + "; ".join(
            f"{r.host} ({_describe(r.returncode)}): {_reason(r.tail)}" for r in failed))


def _stop(run: HostRun) -> None:
    """Close stdin (the remote side sends SIGTERM to its torchrun), then terminate, then kill."""
    try:
        run.process.stdin.close()
    except OSError:
        pass
    for action, wait_s in ((None, 10), (run.process.terminate, 5), (run.process.kill, 5)):
        if action is not None:
            action()
        try:
            run.process.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    run.returncode = run.process.returncode


def _describe(code: int) -> str:
    if code == 255:
        return "ssh exit status 255: the connection failed"
    if code < 0:
        return f"stopped by signal {-code}"
    return f"exit status {code}"


def _reason(tail: list[str]) -> str:
    """The line that says why: a worker's exception (`SomeError: ...`, not torchrun's summary
    ChildFailedError), else the last line that speaks of an error, else the last line."""
    def last(match) -> str | None:
        return next((line.strip()[:400] for line in reversed(tail) if match(line)), None)

    return (last(lambda l: re.search(r"\w(Error|Exception): ", l) and "ChildFailedError" not in l)
            or last(lambda l: re.search(r"error|timed out|refused|unreachable", l, re.I))
            or (tail[-1].strip()[:400] if tail else "no output"))


def run_local(argv: list[str], env: dict[str, str] | None = None) -> int:
    """Run a command on this server with its output going straight to ours (progress bars intact)."""
    return subprocess.run(argv, env={**os.environ, **(env or {})}).returncode
