"""Who a process is, under each launcher; an inconsistent environment turns coordination
off with one warning instead of stopping the job."""

from __future__ import annotations

import logging
import socket

import pytest

from coordinator.single_flight import connect_job_store
from coordinator.topology import Topology, detect


@pytest.mark.parametrize(
    ("env", "want"),
    [
        ({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "GROUP_RANK": "1",
          "SLURM_PROCID": "0"}, (3, 1, 8, 1, "torchrun")),
        ({"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "16",
          "SLURM_NODEID": "2"}, (5, 1, 16, 2, "srun")),
        ({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "0",
          "OMPI_COMM_WORLD_SIZE": "4"}, (2, 0, 4, None, "mpirun")),
        ({"PMI_RANK": "1", "PMI_SIZE": "2"}, (1, 1, 2, None, "pmi")),
        ({}, (0, 0, 1, None, "none")),
    ],
)
def test_each_launchers_variables(env: dict, want: tuple) -> None:
    t = detect(env)
    assert (t.rank, t.local_rank, t.world_size, t.node, t.launcher) == want
    assert t.problem is None


def test_a_rank_beyond_the_world_is_a_problem_not_rank_zero() -> None:
    assert "RANK=4 is not below WORLD_SIZE=4" in detect({"RANK": "4", "WORLD_SIZE": "4"}).problem
    assert "torchrun" in detect({"RANK": "x", "WORLD_SIZE": "2"}).problem


def _topology(**kw: object) -> Topology:
    return Topology(**{"rank": 1, "local_rank": 1, "world_size": 2, "launcher": "srun", **kw})


def test_inconsistent_environments_turn_coordination_off_with_one_warning(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with caplog.at_level(logging.WARNING):
        store, why = connect_job_store(2.0, _topology())
        assert store is None and "MASTER_ADDR" in why
        store, why = connect_job_store(2.0, _topology(problem="RANK=4 is not below ..."))
        assert store is None and "RANK=4" in why
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
        monkeypatch.setenv("MASTER_PORT", str(port))
        store, why = connect_job_store(1.0, _topology())
        assert store is None and "failed" in why
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3 and all("every rank compiles for itself" in w for w in warnings)
    assert connect_job_store(1.0, Topology())[1] == "off: a job of one process"
