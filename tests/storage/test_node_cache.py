import fcntl
import logging
import os
import threading
import time

import pytest
from store_workers import read_through_node_cache, run_together

from storage import open_store
from storage.node_cache import NodeCache

FP = "fp-node"


def test_processes_on_one_node_download_once(store_url, tmp_path):
    payload = os.urandom(256 * 1024)
    open_store(store_url, fingerprint=FP).put("fx", "big", payload)
    cache_dir = str(tmp_path / "node-cache")
    n = 3
    results = run_together(read_through_node_cache, [(store_url, FP, cache_dir)] * n)
    assert all(variants == [payload] for variants, _ in results)
    assert sum(stats["fetches"] for _, stats in results) == 1
    assert sum(stats["node_cache_hits"] for _, stats in results) == n - 1


def test_node_cache_serves_repeat_reads(store_url, tmp_path):
    open_store(store_url, fingerprint=FP).put("fx", "k", b"abc")  # another machine's
    store = open_store(store_url, fingerprint=FP, node_cache_dir=str(tmp_path / "nc"))
    for _ in range(3):
        assert store.get_variants("fx", "k") == [b"abc"]
    assert store.stats.fetches == 1 and store.stats.node_cache_hits == 2


def test_what_a_process_publishes_its_node_reads_without_a_fetch(store_url, tmp_path):
    """A rank waiting for a compile on the claimant's machine reads the published object
    from the node cache: no store request for it."""
    nc = str(tmp_path / "nc")
    open_store(store_url, fingerprint=FP, node_cache_dir=nc).put("fx", "k", b"abc")
    sibling = open_store(store_url, fingerprint=FP, node_cache_dir=nc)
    assert sibling.get_variants("fx", "k") == [b"abc"]
    assert sibling.stats.fetches == 0 and sibling.stats.node_cache_hits == 1


def test_corrupt_node_copy_is_refetched_not_quarantined(tmp_path):
    store = open_store(str(tmp_path / "s"), fingerprint=FP, node_cache_dir=str(tmp_path / "nc"))
    digest = store.put("fx", "k", b"abc")
    cached = tmp_path / "nc" / digest[:2] / digest
    cached.write_bytes(b"bit rot")
    assert store.get_variants("fx", "k") == [b"abc"]
    assert store.stats.fetches == 1 and store.stats.quarantined == 0
    assert cached.read_bytes() != b"bit rot"


def cached_bytes(directory):
    return sum(p.stat().st_size for p in directory.glob("??/*"))


def test_lru_eviction(tmp_path):
    nc = NodeCache(tmp_path, max_bytes=3000)
    digests = [f"{i:02d}" + "0" * 62 for i in range(4)]
    for i, d in enumerate(digests[:3]):
        nc.put(d, bytes(1000))
        os.utime(nc._path(d), (time.time() - 100 + i, time.time() - 100 + i))
    assert nc.get(digests[0]) is not None  # touch: now most recently used
    nc.put(digests[3], bytes(1000))  # over the bound: evict the oldest, digests[1]
    assert nc.get(digests[1]) is None
    assert all(nc.get(d) is not None for d in (digests[0], digests[2], digests[3]))
    assert cached_bytes(tmp_path) == 3000


def test_object_larger_than_cache_is_not_kept(tmp_path):
    nc = NodeCache(tmp_path, max_bytes=10)
    assert nc.put("ab" + "0" * 62, bytes(100)) is False  # so nobody is told to read it
    assert cached_bytes(tmp_path) == 0


def test_notes_of_past_jobs_are_forgotten(tmp_path):
    node = NodeCache(tmp_path / "nc")
    for name in ("index-old", "index-new", "snapshot-old"):
        with node.lock(name):
            node.leave_note(name, b"x")
    hour_ago = time.time() - 3600
    for name in ("index-old", "snapshot-old"):
        os.utime(tmp_path / "nc" / ".notes" / name, (hour_ago, hour_ago))
        os.utime(tmp_path / "nc" / ".locks" / name, (hour_ago, hour_ago))
    node.forget_notes("index-", 1800)
    assert node.note("index-old") is None and node.note("index-new") == b"x"
    assert node.note("snapshot-old") == b"x"  # another kind of note: not ours to forget
    assert sorted(p.name for p in (tmp_path / "nc" / ".locks").iterdir()) == [
        "index-new", "snapshot-old"]


def hold(lock_path):
    """Another process's hold on a node lock (flock conflicts between open files)."""
    f = open(lock_path, "a")  # noqa: SIM115 - the caller closes it
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return f


def test_a_stuck_holder_delays_the_node_only_until_the_deadline(tmp_path, caplog):
    node = NodeCache(tmp_path / "nc", lock_wait_s=0.3)
    holder = hold(tmp_path / "nc" / ".locks" / "obj")
    ran = []
    try:
        with caplog.at_level(logging.WARNING, logger="storage.node_cache"), \
                node.lock("obj", "the download of object obj"):
            ran.append("downloaded it ourselves")
    finally:
        holder.close()
    assert ran == ["downloaded it ourselves"]
    assert [r.getMessage() for r in caplog.records] == [
        "waited 0 s for another process of this node on the download of object obj; "
        "going on without it"]


def test_a_waiter_takes_the_lock_once_the_holder_lets_go(tmp_path, caplog):
    node = NodeCache(tmp_path / "nc", lock_wait_s=30)
    holder = hold(tmp_path / "nc" / ".locks" / "obj")
    threading.Timer(0.2, holder.close).start()
    with caplog.at_level(logging.WARNING, logger="storage.node_cache"), node.lock("obj"), \
            open(holder.name, "a") as other, pytest.raises(BlockingIOError):  # held by us
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert not caplog.records
