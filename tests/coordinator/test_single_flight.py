"""Claims and waits over a real c10d TCPStore, with real processes for the dead claimant."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
import torch.distributed as dist

from coordinator.single_flight import SingleFlight, WaitResult

SETTINGS = {"wait_timeout_s": 20.0, "stale_after_s": 2.0, "heartbeat_s": 0.3}


@pytest.fixture
def server() -> dist.TCPStore:
    return dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                         timeout=timedelta(seconds=10))


def client(server: dist.TCPStore, rank: int, **overrides: float) -> SingleFlight:
    store = dist.TCPStore("127.0.0.1", server.port, is_master=False,
                          timeout=timedelta(seconds=10))
    return SingleFlight(store, rank, **{**SETTINGS, **overrides})


def test_one_claimant_and_the_waiter_is_let_in_when_it_finishes(server: dist.TCPStore) -> None:
    a, b = client(server, 0), client(server, 1)
    assert a.claim("fxgraph", "k1")
    assert not b.claim("fxgraph", "k1")
    threading.Timer(0.5, a.finish, args=("fxgraph", "k1")).start()
    t0 = time.monotonic()
    assert b.wait("fxgraph", "k1") is WaitResult.DONE
    assert 0.4 < time.monotonic() - t0 < 5
    assert b.waits == 1 and b.waited_s > 0.4


def test_a_rank_never_waits_on_its_own_claim(server: dist.TCPStore) -> None:
    a = client(server, 0)
    assert a.claim("fxgraph", "k2")
    assert a.claim("fxgraph", "k2")  # looked up again while compiling


def test_finish_all_releases_claims_that_were_never_published(server: dist.TCPStore) -> None:
    a, b = client(server, 0), client(server, 1)
    assert a.claim("fxgraph", "k3")
    assert not b.claim("fxgraph", "k3")
    a.finish_all()  # the compile ended without a publish (bypass, error)
    assert b.wait("fxgraph", "k3") is WaitResult.DONE


def test_deadline_bounds_a_wait_on_a_live_claimant(server: dist.TCPStore) -> None:
    a, b = client(server, 0), client(server, 1, wait_timeout_s=1.0)
    assert a.claim("fxgraph", "k4")
    assert not b.claim("fxgraph", "k4")
    t0 = time.monotonic()
    assert b.wait("fxgraph", "k4") is WaitResult.DEADLINE
    assert time.monotonic() - t0 < 3


def test_killed_claimant_is_detected_by_its_silent_heartbeat(server: dist.TCPStore) -> None:
    code = (
        "import sys, time, torch.distributed as dist\n"
        "from datetime import timedelta\n"
        "from coordinator.single_flight import SingleFlight\n"
        f"s = dist.TCPStore('127.0.0.1', {server.port}, is_master=False, "
        "timeout=timedelta(seconds=10))\n"
        "f = SingleFlight(s, 0, wait_timeout_s=60, stale_after_s=2, heartbeat_s=0.3)\n"
        "assert f.claim('fxgraph', 'k5')\n"
        "print('claimed', flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert proc.stdout.readline().strip() == "claimed"
        waiter = client(server, 1)
        assert not waiter.claim("fxgraph", "k5")
        time.sleep(1.0)  # heartbeats are moving: the claimant is alive
        os.kill(proc.pid, signal.SIGKILL)
        t0 = time.monotonic()
        assert waiter.wait("fxgraph", "k5") is WaitResult.CLAIMANT_DEAD
        assert time.monotonic() - t0 < 2.0 + 3
    finally:
        proc.kill()
        proc.wait()


def test_without_a_job_store_every_claim_is_granted() -> None:
    solo = SingleFlight(None, 0, **SETTINGS)
    assert not solo.coordinated
    assert solo.claim("fxgraph", "k") and solo.claim("fxgraph", "k")
