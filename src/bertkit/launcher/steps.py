"""Running a plan's steps: in this process, under torchrun, or on every server over ssh; and
printing them for --dry_run."""

from __future__ import annotations

import importlib
import os
import shlex
import sys
import time
from dataclasses import dataclass
from typing import Callable

from bertkit import BertkitError
from bertkit.commands import COMMANDS
from bertkit.distributed import dist_timeout
from bertkit.launcher import spawn
from bertkit.launcher.argv import num
from bertkit.launcher.seed_flags import say
from bertkit.launcher.topology import Topology


@dataclass
class Step:
    """One bertkit command of a plan."""

    title: str
    argv: list[str]  # after `bertkit`
    before: Callable[[], object] | None = None  # a check run just before this step (phase 1 finished)


def timeout_of(args) -> float:
    """--dist_timeout, else $BERTKIT_DIST_TIMEOUT, else 600 seconds."""
    return args.dist_timeout if args.dist_timeout is not None else dist_timeout()


def worker_env(args, topo: Topology) -> dict[str, str]:
    """Environment for the workers: the process-group timeout, threads per CPU worker, interfaces."""
    env = {"BERTKIT_DIST_TIMEOUT": num(timeout_of(args))}
    if topo.mode in ("torchrun", "hosts") and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // topo.workers_per_host))
    if topo.mode == "hosts":
        ifname = spawn.socket_ifname()
        if ifname:
            env["GLOO_SOCKET_IFNAME"] = env["NCCL_SOCKET_IFNAME"] = ifname
    return env


def commands(step: Step, topo: Topology, args, shell=None) -> list[tuple[str, list[str]]]:
    """(host, argv) that run a step: one per server in `hosts` mode, else one for this server."""
    if topo.mode in ("here", "inside"):
        return [("local", [sys.executable, "-m", "bertkit", *step.argv])]
    if topo.mode == "torchrun":
        return [("local", spawn.torchrun_argv(step.argv, topo.workers_per_host, timeout_s=timeout_of(args)))]
    shell = shell or spawn.ssh_shell(int(os.environ.get("DOCKER_SSHD_PORT", spawn.DEFAULT_SSH_PORT)))
    port = int(os.environ.get("MASTER_PORT", spawn.DEFAULT_MASTER_PORT))
    env = {**spawn.forwarded_env(), **worker_env(args, topo)}
    out = []
    for i, host in enumerate(topo.hosts):
        argv = spawn.torchrun_argv(step.argv, topo.workers_per_host, len(topo.hosts), i, topo.hosts[0], port,
                                    timeout_of(args))
        out.append((host, shell(host, spawn.remote_command(argv, env, os.getcwd()))))
    return out


def execute(steps: list[Step], topo: Topology, args, shell=None) -> int:
    """Run the steps in order; the first that fails ends the run with its exit status."""
    env = worker_env(args, topo)
    talk = say if topo.rank == 0 else (lambda msg: None)
    for n, step in enumerate(steps, 1):
        talk(f"[{n}/{len(steps)}] {step.title}")
        if step.before is not None:
            step.before()
        started = time.monotonic()
        if topo.mode in ("here", "inside"):
            os.environ.update(env)
            module = importlib.import_module(COMMANDS[step.argv[0]][0])
            rc = module.main(step.argv[1:]) or 0
        elif topo.mode == "torchrun":
            rc = spawn.run_local(commands(step, topo, args)[0][1], env)
        else:
            try:
                spawn.run_hosts(commands(step, topo, args, shell), grace_s=timeout_of(args) + 30)
            except BertkitError as e:
                hint = (f" (workers stop waiting for each other after --dist_timeout {timeout_of(args):g} s: "
                        "a server, or the network between the servers, failed)") if "Timed out" in str(e) else ""
                raise BertkitError(f"{step.title}: {e}{hint}") from None
            rc = 0
        if rc != 0:
            say(f"{step.title} failed (exit status {rc})")
            return rc
        talk(f"{step.title}: done in {time.monotonic() - started:.0f} s")
    return 0


def check_hosts(topo: Topology, shell=None) -> None:
    """Before any work: every server of MULTI_HLS_IPS answers, or the launch fails naming those
    that do not (after ssh's ConnectTimeout at most)."""
    if topo.mode == "hosts":
        shell = shell or spawn.ssh_shell(int(os.environ.get("DOCKER_SSHD_PORT", spawn.DEFAULT_SSH_PORT)))
        spawn.check_reachable(topo.hosts, shell, spawn.SSH_CONNECT_TIMEOUT_S + 5)


def show(steps: list[Step], topo: Topology, args, shell=None) -> None:
    for step in steps:
        print(f"# {step.title}")
        for host, argv in commands(step, topo, args, shell):
            print((f"[{host}] " if topo.mode == "hosts" else "") + shlex.join(argv))
