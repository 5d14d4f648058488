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

from coordinator.single_flight import JobStore, SingleFlight, Waited, WaitResult

SETTINGS = {"wait_timeout_s": 20.0, "stale_after_s": 2.0, "heartbeat_s": 0.3}


@pytest.fixture
def server() -> dist.TCPStore:
    return dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                         timeout=timedelta(seconds=10))


def connect(port: int) -> JobStore:
    def one() -> dist.TCPStore:
        return dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=10))

    return JobStore(one(), one())


def client(server: dist.TCPStore, rank: int, node_dir: str | None = None,
           **overrides: float) -> SingleFlight:
    return SingleFlight(connect(server.port), rank, node_dir=node_dir,
                        **{**SETTINGS, **overrides})


def test_one_claimant_and_the_waiter_is_let_in_when_it_finishes(server: dist.TCPStore) -> None:
    a, b = client(server, 0), client(server, 1)
    assert a.claim("fxgraph", "k1")
    assert not b.claim("fxgraph", "k1")
    threading.Timer(0.5, a.finish, args=("fxgraph", "k1", "d1")).start()
    t0 = time.monotonic()
    assert b.wait("fxgraph", "k1") == Waited(WaitResult.DONE, "d1")  # the variant published
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
    assert b.wait("fxgraph", "k3") == Waited(WaitResult.DONE, None)  # nothing to take
    assert a.claim("fxgraph", "k3b")
    a.note_variant("fxgraph", "k3b", "found")  # a stored variant, loaded after claiming
    a.finish_all()
    assert b.finished("fxgraph", "k3b") == Waited(WaitResult.DONE, "found")
    assert b.finished("fxgraph", "k-unclaimed") is None


def test_a_claim_handed_over_to_a_publish_thread_outlives_its_compile(
        server: dist.TCPStore) -> None:
    a, b = client(server, 0), client(server, 1)
    assert a.claim("fxgraph", "k3c") and a.hand_over("fxgraph", "k3c")
    assert not b.hand_over("fxgraph", "k3c")  # holds no claim on it
    a.finish_all()  # the compile ended; the upload runs on
    assert b.finished("fxgraph", "k3c") is None and a.holds("fxgraph", "k3c")
    a.finish("fxgraph", "k3c", "d3c")  # stored
    assert b.finished("fxgraph", "k3c") == Waited(WaitResult.DONE, "d3c")
    assert a.claim("fxgraph", "k3d") and a.hand_over("fxgraph", "k3d")
    a.close()  # at exit, a publish that did not end in time releases it all the same
    assert b.finished("fxgraph", "k3d") == Waited(WaitResult.DONE, None)


def test_deadline_bounds_a_wait_on_a_live_claimant(server: dist.TCPStore) -> None:
    a, b = client(server, 0), client(server, 1, wait_timeout_s=1.0)
    assert a.claim("fxgraph", "k4")
    assert not b.claim("fxgraph", "k4")
    t0 = time.monotonic()
    assert b.wait("fxgraph", "k4").result is WaitResult.DEADLINE
    assert time.monotonic() - t0 < 3


def test_killed_claimant_is_detected_by_its_silent_heartbeat(server: dist.TCPStore) -> None:
    code = (
        "import sys, time, torch.distributed as dist\n"
        "from datetime import timedelta\n"
        "from coordinator.single_flight import JobStore, SingleFlight\n"
        f"s = dist.TCPStore('127.0.0.1', {server.port}, is_master=False, "
        "timeout=timedelta(seconds=10))\n"
        "f = SingleFlight(JobStore(s, s), 0, wait_timeout_s=60, stale_after_s=2, "
        "heartbeat_s=0.3)\n"
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
        assert waiter.wait("fxgraph", "k5").result is WaitResult.CLAIMANT_DEAD
        assert time.monotonic() - t0 < 2.0 + 3
    finally:
        proc.kill()
        proc.wait()


def test_without_a_job_store_every_claim_is_granted() -> None:
    solo = SingleFlight(None, 0, **SETTINGS)
    assert not solo.coordinated
    assert solo.claim("fxgraph", "k") and solo.claim("fxgraph", "k")


def test_one_rank_per_node_deals_with_the_job_store(server: dist.TCPStore, tmp_path) -> None:
    """Two nodes of two ranks: per key, the job store sees the claimant and one
    representative of the other node; the rest wait on their node's lock, and learn the
    variant published from what its holder left there."""
    node_a, node_b = str(tmp_path / "a"), str(tmp_path / "b")
    claimant, mate_a = client(server, 0, node_a), client(server, 1, node_a)
    rep_b, mate_b = client(server, 2, node_b), client(server, 3, node_b)
    assert claimant.claim("fxgraph", "n1")
    for f in (mate_a, rep_b, mate_b):
        assert not f.claim("fxgraph", "n1")
    results: dict[int, Waited] = {}
    waiters = [threading.Thread(target=lambda f=f, r=r: results.__setitem__(r, f.wait(
        "fxgraph", "n1"))) for r, f in ((1, mate_a), (2, rep_b), (3, mate_b))]
    for t in waiters:
        t.start()
    time.sleep(3.0)  # a long compile: node-local waiters cost the job store nothing
    ops_before = mate_a.job_store_ops, mate_b.job_store_ops
    published = time.monotonic()
    claimant.finish("fxgraph", "n1", "v1")
    for t in waiters:
        t.join(timeout=10)
    assert results == {r: Waited(WaitResult.DONE, "v1") for r in (1, 2, 3)}
    assert time.monotonic() - published < 0.5  # every node woken by the publish
    assert ops_before == (0, 0) and (mate_a.job_store_ops, mate_b.job_store_ops) == (0, 0)
    # A claim, the owner, one blocking wait, a heartbeat read every stale_after_s / 4:
    # not the three operations every 50 ms of a polling waiter (180 in these 3 s).
    bound = 5 + 3.0 / (SETTINGS["stale_after_s"] / 4) + 2
    assert rep_b.job_store_ops <= bound, rep_b.job_store_ops


def test_a_dead_claimant_is_marked_done_for_every_waiter(server: dist.TCPStore) -> None:
    """The waiter that finds the claimant's heartbeat gone marks the key done: waiters of
    other nodes stop waiting too, instead of each reaching the same verdict."""
    silent = SingleFlight(connect(server.port), 0, wait_timeout_s=20, stale_after_s=1.0,
                          heartbeat_s=60.0)  # claims, but its first beat would come in 60 s
    first, second = client(server, 1, stale_after_s=1.0), client(server, 2, stale_after_s=30)
    assert silent.claim("fxgraph", "d1")
    assert not first.claim("fxgraph", "d1") and not second.claim("fxgraph", "d1")
    later: list[Waited] = []
    t = threading.Thread(target=lambda: later.append(second.wait("fxgraph", "d1")))
    t.start()
    assert first.wait("fxgraph", "d1").result is WaitResult.CLAIMANT_DEAD
    t.join(timeout=5)
    assert later == [Waited(WaitResult.DONE, None)]


def test_the_first_to_publish_an_unclaimed_variant_is_the_only_one(server: dist.TCPStore) -> None:
    a, b = client(server, 0), client(server, 1)
    assert a.first_to_publish("aotautograd", "k", "guards-1")
    assert not b.first_to_publish("aotautograd", "k", "guards-1")
    assert b.first_to_publish("aotautograd", "k", "guards-2")  # other sizes, other guards
    assert SingleFlight(None, 0, **SETTINGS).first_to_publish("aotautograd", "k", "guards-1")
