"""Who starts the workers: this process, an outside launcher (torchrun, mpirun, a PyTorchJob),
torchrun on this server (-v N), or torchrun on every server of MULTI_HLS_IPS."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from bertkit import BertkitError
from bertkit.launcher.seed_flags import say
from bertkit.launcher.spawn import hosts_from_env
from bertkit.ranks import env_ranks


@dataclass
class Topology:
    """Who runs the workers: `here` (this process), `inside` (ranks an outside launcher started),
    `torchrun` (N workers on this server) or `hosts` (N workers on each server of MULTI_HLS_IPS)."""

    mode: str
    workers_per_host: int = 1
    hosts: list[str] = field(default_factory=list)
    rank: int = 0
    world_size: int = 1


def detect(args, env: dict | None = None) -> Topology:
    env = os.environ if env is None else env
    rank, world, _, launcher = env_ranks(env)
    n = args.use_horovod
    if n is not None and n < 1:
        raise BertkitError(f"-v/--use_horovod must be >= 1, got {n}")
    if args.kubernetes_run or world > 1:
        if not args.kubernetes_run:
            say(f"started by {launcher} with {world} processes: taking ranks from it (as --kubernetes_run=True)")
        if n is not None and n > 1:
            say(f"-v {n}: ignored under an outside launcher, which started {world} worker(s); use -v 1")
        return Topology("inside", 1, [], rank, world)
    hosts = hosts_from_env(env)
    if hosts:
        return Topology("hosts", n or 1, hosts, 0, (n or 1) * len(hosts))
    if n and n > 1:
        check_devices(n, args.device)
        return Topology("torchrun", n, [], 0, n)
    return Topology("here")


def check_devices(workers: int, device: str) -> None:
    """One worker per GPU: -v N may not ask for more GPUs than this server has."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available() and workers > torch.cuda.device_count():
        raise BertkitError(f"-v {workers}: this server has {torch.cuda.device_count()} GPU(s), one worker each "
                           "(or pass --device cpu for CPU workers)")
