"""A rank misbehaves: its compile raises, it is killed while waiting, the group restarts,
or it starts late. The job finishes, no rank waits past the release or the deadline, and
outputs equal eager.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.faults import common

pytestmark = pytest.mark.multiprocess


def test_claimants_compile_raises(tmp_path: Path) -> None:
    """The claimant's compile raises (it runs eagerly); the waiter is released and compiles."""
    marks = tmp_path / "marks"
    marks.mkdir()
    store = tmp_path / "store"
    job = common.run(tmp_path, "raise", str(store), ["--raise-once", str(marks)]).check()
    common.assert_outputs_are_eager(job)
    raiser = int((marks / "raised").read_text())
    other = 1 - raiser
    stats = {s["rank"]: s for s in job.stats}
    assert "injected compile error" in job.output
    assert stats[raiser]["claimed"] == 1 and stats[raiser]["published"] == 0, stats
    # The waiter was let go when the claimant's compile ended, long before any deadline or
    # heartbeat timeout (--stale-after 10), then compiled and published for itself.
    assert stats[other]["waits"] == 1 and stats[other]["waited_s"] < 9, stats
    assert stats[other]["fxgraph_cache_miss"] == 1 and stats[other]["published"] >= 1, stats
    assert len(common.digests(str(store))) >= 1
    common.verify(str(store))


def test_waiting_rank_killed_then_group_restarts(tmp_path: Path) -> None:
    t0 = time.monotonic()
    store = tmp_path / "store"
    job = common.run(tmp_path, "killwaiter", str(store), ["--kill-waiter"],
                     torchrun_args=["--max-restarts", "1"]).check()
    killed = list(tmp_path.glob("out-killwaiter/out.killed.rank*"))
    assert len(killed) == 1, job.output[-3000:]  # the fault happened, to the waiting rank
    assert [o["attempt"] for o in job.outs] == [1, 1]
    common.assert_outputs_are_eager(job)
    # The restarted group never waits on the dead group's claims (keys carry the restart):
    # every wait of the new group ended in a load from a live claimant, never in the
    # heartbeat timeout after which a rank compiles for itself.
    common.assert_no_wait_past_deadline(job)
    for stats in job.stats:
        assert stats["waits"] == stats["loaded_after_wait"], stats
    assert sum(s["fxgraph_cache_miss"] for s in job.stats) <= 1
    common.verify(str(store))
    assert time.monotonic() - t0 < 180


def test_group_restart_reuses_what_was_published(tmp_path: Path) -> None:
    """Rank 0 fails after its first compile; the restarted group, on fresh local caches,
    loads f from the store: nothing is compiled again."""
    store = tmp_path / "store"
    job = common.run(tmp_path, "restart", str(store), ["--die-after-f", "0", "--fresh-local"],
                     torchrun_args=["--max-restarts", "1"]).check()
    assert [o["attempt"] for o in job.outs] == [1, 1], job.output[-3000:]
    assert "exitcode  : 3" in job.output or "exitcode: 3" in job.output, job.output[-3000:]
    common.assert_outputs_are_eager(job)
    common.assert_no_wait_past_deadline(job, bound_s=10)
    for stats in job.stats:  # the attempt-1 ranks
        assert stats["fxgraph_cache_miss"] == 0 and stats["fxgraph_cache_hit"] == 1, stats
    common.verify(str(store))


def test_late_rank_loads_without_waiting(tmp_path: Path) -> None:
    """Rank 1 starts compiling only after rank 0 has published: it loads, never waits."""
    pause = tmp_path / "pause"
    pause.mkdir()
    store = tmp_path / "store"
    job = common.run(tmp_path, "late", str(store), ["--pause", str(pause), "--late", "1"]).check()
    common.assert_outputs_are_eager(job)
    stats = {s["rank"]: s for s in job.stats}
    assert stats[0]["fxgraph_cache_miss"] == 1, stats
    assert stats[1]["waits"] == 0 and stats[1]["fxgraph_cache_miss"] == 0, stats
    # Both ranks share the node's Inductor cache: rank 1 hits what rank 0 wrote there
    # (or, on another node, what it published).
    assert stats[1]["fxgraph_cache_hit"] == 1, stats
    assert stats[0]["published"] >= 1, stats
    common.verify(str(store))
