"""Many writers, and a pruner, on one store at once: nothing is torn, nothing young is lost."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from storage import open_store
from tests.faults import common
from tests.faults.workers import KEYS, publish_variants
from tests.storage.store_workers import run_together


def test_four_processes_publish_variants_of_the_same_keys(store_url: str) -> None:
    n, rounds = 4, 3
    t0 = time.monotonic()
    results = run_together(publish_variants,
                           [(store_url, "fp-four", w, rounds) for w in range(n)], timeout_s=120)
    assert time.monotonic() - t0 < 120
    for writer, bad, stats in results:
        assert bad == [], (writer, bad)
        assert stats["quarantined"] == 0 and stats["puts"] == rounds * len(KEYS)
    final = open_store(store_url, fingerprint="fp-four")
    for key in KEYS:  # every writer's variant of every key, whole and verified
        want = sorted(f"writer {w} variant of {key}".encode() * 50 for w in range(n))
        assert sorted(final.get_variants("fxgraph", key)) == want
    assert final.stats.quarantined == 0
    report = common.verify(store_url)
    assert report["checked"] >= n * len(KEYS)


@pytest.mark.multiprocess
def test_prune_while_a_job_publishes(tmp_path: Path) -> None:
    """`pt2cc prune --older-than 0s --yes` in a loop while a job publishes: the job's entries
    survive and verify, an entry of 30 minutes survives, one of two hours goes."""
    store = tmp_path / "store"
    old = open_store(str(store), fingerprint="fp-old")
    two_hours = old.put("fxgraph", "pt2:old", b"two hours old")
    half_hour = old.put("fxgraph", "pt2:young", b"thirty minutes old")
    now = time.time()
    for digest, age in ((two_hours, 7200), (half_hour, 1800)):
        for path in store.glob(f"v1/fp-old/*/**/{digest}"):
            os.utime(path, (now - age, now - age))

    proc = common.start(tmp_path, "pruned", str(store), ["--second"])
    prunes = 0
    while proc.poll() is None:
        res = common.pt2cc("prune", str(store), "--older-than", "0s", "--yes")
        assert res.returncode == 0, res.stdout + res.stderr
        prunes += 1
    job = common.jobs.finish(proc, tmp_path / "out-pruned").check()
    assert prunes >= 3
    common.assert_outputs_are_eager(job, second=True)
    common.assert_no_wait_past_deadline(job)
    published = sum(s["published"] for s in job.stats)
    entries = common.digests(str(store))
    kept = {(k, key) for k, key, _ in entries}
    assert ("fxgraph", "pt2:young") in kept and ("fxgraph", "pt2:old") not in kept
    # Every variant the job published is kept, one per publish (counted as variants, not
    # keys: a key may hold several).
    ours = [e for e in entries if e[1] != "pt2:young"]
    assert len(ours) == published, (ours, published)
    common.verify(str(store))
