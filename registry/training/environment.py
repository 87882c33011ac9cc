"""Where a training job runs: host, user, scheduler job, and its place in a `torchrun` group."""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass


def scheduler_job_id(environ: dict[str, str] | None = None) -> str | None:
    """The Slurm job as Slurm writes it (`1234`, or `1234_7` for task 7 of array job 1234), or None.

    A requeued job keeps its id, so every run of one requeue chain shares it.
    """
    env = os.environ if environ is None else environ
    array_job, array_task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return env.get("SLURM_JOB_ID") or None


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry inside some containers
        return str(os.getuid())


@dataclass(frozen=True)
class RankInfo:
    """This process's place in a `torchrun` group (rank 0 of 1 when run alone)."""

    rank: int
    world_size: int

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls) -> "RankInfo":
        return cls(rank=int(os.environ.get("RANK", "0")), world_size=int(os.environ.get("WORLD_SIZE", "1")))


def host_name() -> str:
    return socket.gethostname()
