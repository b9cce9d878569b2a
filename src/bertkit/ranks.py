"""This process's rank, the world size and the local rank, from whichever launcher started it
(torchrun, Open MPI's or another MPI's mpirun, SLURM). A leaf: the data pipeline and the training
processes read their ranks from here alike."""

from __future__ import annotations

import os

from bertkit import BertkitError


def env_ranks(env: dict | None = None) -> tuple[int, int, int, str]:
    """(rank, world size, local rank, launcher) from the launcher's environment variables."""
    env = os.environ if env is None else env
    for launcher, keys in (("torchrun", ("RANK", "WORLD_SIZE", "LOCAL_RANK")),
                           ("mpirun", ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK")),
                           ("mpirun", ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID")),
                           ("slurm", ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"))):
        if keys[0] in env and keys[1] in env:
            try:
                rank, world = int(env[keys[0]]), int(env[keys[1]])
                local = int(env.get(keys[2], rank))
            except ValueError:
                raise BertkitError(f"{keys[0]}/{keys[1]}: not integers in the environment") from None
            if not 0 <= rank < world:
                raise BertkitError(f"{keys[0]}={rank} is outside world size {keys[1]}={world}")
            return rank, world, local, launcher
    return 0, 1, 0, "none"
