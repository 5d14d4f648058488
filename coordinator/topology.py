"""Who this process is in the job, from whichever launcher started it.

torchrun, srun, mpirun and PMI-based launchers each name rank, local rank, world size and
node in their own variables; the first family present wins. A process that finds none is
a job of one: never "every process is rank 0" of a job of many.
"""

from __future__ import annotations

import dataclasses
import os

# (launcher, rank, local rank, world size, node) variable names, in order of precedence.
_FAMILIES = (
    ("torchrun", "RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK"),
    ("srun", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS", "SLURM_NODEID"),
    ("mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_SIZE",
     None),
    ("pmi", "PMI_RANK", None, "PMI_SIZE", None),
)


@dataclasses.dataclass(frozen=True)
class Topology:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    node: int | None = None
    launcher: str = "none"
    problem: str | None = None  # why these numbers cannot be trusted, if they cannot

    @property
    def agent(self) -> bool:
        """Whether a torchrun (torchelastic) agent hosts the job's c10d store."""
        return self.launcher == "torchrun" and "TORCHELASTIC_RUN_ID" in os.environ


def detect(env: dict[str, str] | None = None) -> Topology:
    env = dict(os.environ if env is None else env)
    for launcher, rank_var, local_var, world_var, node_var in _FAMILIES:
        if rank_var not in env:
            continue
        try:
            rank = int(env[rank_var])
            world = int(env.get(world_var, "1"))
            local = int(env[local_var]) if local_var and local_var in env else rank
            node = int(env[node_var]) if node_var and node_var in env else None
        except ValueError as exc:
            return Topology(launcher=launcher, problem=f"{launcher}'s variables: {exc}")
        problem = None
        if not 0 <= rank < world:
            problem = f"{rank_var}={rank} is not below {world_var}={world}"
        return Topology(rank, local, world, node, launcher, problem)
    return Topology()


_detected: Topology | None = None


def this_process() -> Topology:
    """The topology of this process (read once)."""
    global _detected
    if _detected is None:
        _detected = detect()
    return _detected
