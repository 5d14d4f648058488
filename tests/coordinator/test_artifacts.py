"""Every guarded variant stored under a key reaches PyTorch's
local dir, where PyTorch's own guard evaluation picks one (or none) per rank."""

from __future__ import annotations

import base64
import json
import pickle
import threading
import time
import types
from pathlib import Path

import pytest
import torch.distributed as dist

import storage.store
from coordinator import bundle, compat
from coordinator.artifacts import Artifacts
from coordinator.kernels import KernelFiles
from coordinator.single_flight import JobStore, SingleFlight
from coordinator.stats import RankStats
from storage import open_store
from storage.fail_open import FailOpenStore
from storage.node_cache import NodeCache

KEY = "pt2:fx-graph-v1::fkey:c1"


def variant(content: bytes, files: dict[str, bytes] | None = None) -> bytes:
    value = json.dumps({"data": base64.b64encode(content).decode(), "time_taken_ms": 1})
    return bundle.pack(value.encode(), files)


@pytest.fixture
def parts(tmp_path: Path) -> tuple[Artifacts, object, Path]:
    store = open_store(str(tmp_path / "store"), fingerprint="fp", node_cache_dir=None)
    kernels = KernelFiles(str(tmp_path / "inductor"), str(tmp_path / "pch"),
                          str(tmp_path / "triton"))
    flight = SingleFlight(None, 0, wait_timeout_s=5, stale_after_s=4, heartbeat_s=1)
    return Artifacts(store, flight, kernels, RankStats()), store, tmp_path


def test_every_variant_lands_in_the_local_dir_with_its_kernels(parts: tuple) -> None:
    artifacts, store, tmp = parts
    store.put("fxgraph", KEY, variant(b"specialised", {"ab/k1.so": b"lib1"}))
    store.put("fxgraph", KEY, variant(b"general", {"cd/k2.so": b"lib2"}))
    subdir = tmp / "inductor" / "fxgraph" / "fkey"
    artifacts.offer_local("fxgraph", KEY, str(subdir))
    entries = {p.read_bytes() for p in subdir.iterdir()}
    assert entries == {b"specialised", b"general"}
    assert sorted(p.name for p in subdir.iterdir()) == sorted(
        compat.local_entry_name(c) for c in (b"specialised", b"general"))
    assert (tmp / "inductor" / "ab" / "k1.so").read_bytes() == b"lib1"
    assert (tmp / "inductor" / "cd" / "k2.so").read_bytes() == b"lib2"
    # Both were offered: a remote lookup (no local guard held) finds nothing new, compiles.
    assert artifacts.get("fxgraph", KEY) is None


def test_a_variant_published_later_is_handed_over_by_the_remote_lookup(parts: tuple) -> None:
    artifacts, store, tmp = parts
    store.put("fxgraph", KEY, variant(b"first"))
    subdir = tmp / "inductor" / "fxgraph" / "fkey"
    artifacts.offer_local("fxgraph", KEY, str(subdir))
    store.put("fxgraph", KEY, variant(b"second"))  # another rank, meanwhile
    payload = artifacts.get("fxgraph", KEY)
    assert payload is not None
    assert base64.b64decode(json.loads(payload)["data"]) == b"second"
    assert artifacts.get("fxgraph", KEY) is None


def entry(guards: str, tag: str) -> bytes:
    """PyTorch's value for a guarded entry: a pickle with a guard expression."""
    content = pickle.dumps(types.SimpleNamespace(guards_expr=guards, tag=tag))
    return json.dumps({"data": base64.b64encode(content).decode()}).encode()


SERVERS: list[dist.TCPStore] = []


def job(tmp_path: Path, store: object, nodes: list[str]) -> list[Artifacts]:
    """One process per entry of `nodes` (its node's name), on one job store."""
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    SERVERS.append(server)  # the server stops when its object is collected
    kernels = KernelFiles(str(tmp_path / "inductor"), str(tmp_path / "pch"),
                          str(tmp_path / "triton"))

    def connect() -> dist.TCPStore:  # a blocking wait holds its connection
        return dist.TCPStore("127.0.0.1", server.port, is_master=False)

    return [Artifacts(store, SingleFlight(JobStore(connect(), connect()), rank,
                                          wait_timeout_s=10,
                                          stale_after_s=4, heartbeat_s=1,
                                          node_dir=str(tmp_path / node / "claims")),
                      kernels, RankStats(), node=NodeCache(str(tmp_path / node)))
            for rank, node in enumerate(nodes)]


def counting(store: object, method: str) -> list[int]:
    calls: list[int] = []
    real = getattr(store, method)
    setattr(store, method, lambda *a: calls.append(1) or real(*a))
    return calls


def test_unclaimed_kinds_do_not_pile_up_duplicates(tmp_path: Path) -> None:
    """Every rank builds a missed AOTAutograd entry at once: one variant per guards."""
    store = open_store(str(tmp_path / "store"), fingerprint="fp")
    ranks = job(tmp_path, store, ["a", "a", "b"])
    ranks[0].put("aotautograd", "akey", entry("s0 < 8", "rank 0's"))
    ranks[1].put("aotautograd", "akey", entry("s0 < 8", "rank 1's"))  # byte-different
    ranks[2].put("aotautograd", "akey", entry("s0 >= 8", "rank 2's"))  # other sizes
    for r in ranks:
        r.drain(5)
    assert len(store.get_variants("aotautograd", "akey")) == 2


def test_ranks_whose_guards_rejected_the_claimants_variant_publish_theirs_once(
        tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"), fingerprint="fp")
    claimant, *others = job(tmp_path, store, ["a", "a", "b"])
    assert claimant.get("fxgraph", KEY) is None  # claimed
    claimant.put("fxgraph", KEY, entry("s0 < 8", "the claimant's"))
    for rank in others:  # compiled after the claimant's variant failed their guards
        rank.put("fxgraph", KEY, entry("s0 >= 8", "a waiter's"))
    for rank in (claimant, *others):
        rank.drain(5)
    assert len(store.get_variants("fxgraph", KEY)) == 2


def test_waiters_take_the_variant_the_claimant_names_without_listing(tmp_path: Path) -> None:
    """The claimant on node a, a representative and a node mate on node b: the key is
    listed once in the job (the claimant's check), and every waiter loads its variant."""
    store = open_store(str(tmp_path / "store"), fingerprint="fp")
    listings = counting(store, "list_variants")
    claimant, representative, mate = job(tmp_path, store, ["a", "b", "b"])
    value = b'{"data": "Zng=", "time_taken_ms": 1}'
    assert claimant.get("fxgraph", KEY) is None  # claimed: compile
    found: dict[int, bytes | None] = {}
    waiters = [threading.Thread(target=lambda r=r, a=a: found.__setitem__(
        r, a.get("fxgraph", KEY))) for r, a in ((1, representative), (2, mate))]
    for t in waiters:
        t.start()
        time.sleep(0.5)  # the representative first, then its mate
    claimant.put("fxgraph", KEY, value)
    for t in waiters:
        t.join(10)
    assert found == {1: value, 2: value}
    assert len(listings) == 1


def test_the_claimants_node_mates_load_before_the_upload_ends(tmp_path: Path,
                                                               monkeypatch) -> None:
    store = open_store(str(tmp_path / "store"), fingerprint="fp",
                       node_cache_dir=str(tmp_path / "a"))
    upload, real_write = threading.Event(), storage.store.write_atomic

    def slow_write(fs: object, path: str, data: bytes) -> None:
        assert upload.wait(10)
        real_write(fs, path, data)

    monkeypatch.setattr(storage.store, "write_atomic", slow_write)
    claimant, mate = job(tmp_path, store, ["a", "a"])
    value = b'{"data": "Zng=", "time_taken_ms": 1}'
    assert claimant.get("fxgraph", KEY) is None  # claimed
    found: list[bytes | None] = []
    waiter = threading.Thread(target=lambda: found.append(mate.get("fxgraph", KEY)))
    waiter.start()
    time.sleep(0.5)  # waiting on the node lock
    claimant.put("fxgraph", KEY, value)
    waiter.join(10)
    assert found == [value]  # loaded while the upload is held
    assert store.list_variants("fxgraph", KEY) == [] and claimant._flight.holds("fxgraph", KEY)
    upload.set()
    claimant.drain(10)
    assert store.list_variants("fxgraph", KEY) != []
    assert not claimant._flight.holds("fxgraph", KEY)  # released once stored


def test_a_key_is_listed_once_per_node_for_the_job(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"), fingerprint="fp")
    listings = counting(store, "list_variants")
    ranks = job(tmp_path, store, ["a", "a", "b"])
    for r in ranks:
        assert r.get("aotautograd", "akey") is None
    assert len(listings) == 2  # nodes a and b
    assert job(tmp_path, store, ["a"])[0].get("aotautograd", "akey") is None
    assert len(listings) == 3  # a new job lists again


def test_no_publish_runs_on_the_compile_thread(tmp_path: Path, monkeypatch) -> None:
    """Every publish is stored in the background, a claimed one on its own thread (not
    behind the entries nobody waits for); the claim outlives the compile until it is
    stored, so other nodes' waiters never take a variant that is not there yet."""
    store = open_store(str(tmp_path / "store"), fingerprint="fp")
    artifacts, _ = job(tmp_path, store, ["a", "a"])
    flight = artifacts._flight
    held, writers, real_put = threading.Event(), {}, store.put

    def put(kind: str, key: str, data: bytes, on_node: object = None) -> str:
        writers[kind] = threading.current_thread().name
        assert held.wait(5)
        return real_put(kind, key, data, on_node)

    monkeypatch.setattr(store, "put", put)
    artifacts.put("autotune", "pt2:tkey", b'{"XBLOCK": 64}')  # returns while the store is held
    assert artifacts.get("fxgraph", KEY) is None and flight.holds("fxgraph", KEY)  # claimed
    artifacts.put("fxgraph", KEY, b'{"data": "Zng=", "time_taken_ms": 1}')
    artifacts.compile_ended()  # the compile is over; its publish is not
    assert store.list_variants("fxgraph", KEY) == [] and flight.holds("fxgraph", KEY)
    held.set()
    artifacts.drain(5)
    assert len(store.list_variants("autotune", "pt2:tkey")) == 1
    assert len(store.list_variants("fxgraph", KEY)) == 1 and not flight.holds("fxgraph", KEY)
    assert writers == {"autotune": "pt2cc-publish", "fxgraph": "pt2cc-publish-claimed"}


def test_autotune_lookups_read_the_start_up_index_only(parts: tuple) -> None:
    """One lookup per Triton kernel: none of them may cost a store request."""
    artifacts, store, _ = parts
    store.put("autotune", "pt2:before", bundle.pack(b'{"XBLOCK": 64}'))
    assert artifacts.get("autotune", "pt2:before") == b'{"XBLOCK": 64}'  # the index has it
    store.put("autotune", "pt2:after", bundle.pack(b'{"XBLOCK": 32}'))  # after the listing
    assert artifacts.get("autotune", "pt2:after") is None  # a listing would have found it


def test_no_claim_while_the_store_is_not_open(tmp_path: Path) -> None:
    """A claim promises the waiters a publish: a rank whose store is still opening (or
    could not be opened) compiles for itself, and no other rank waits on it."""
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    flights = [SingleFlight(JobStore(server, server), rank, wait_timeout_s=5, stale_after_s=4,
                            heartbeat_s=1) for rank in (0, 1)]
    inner = open_store(str(tmp_path / "store"), fingerprint="fp")
    go = threading.Event()
    closed = FailOpenStore(inner.url, lambda: inner if go.wait(10) else None, deadline_s=0.2)
    kernels = KernelFiles(str(tmp_path / "inductor"), str(tmp_path / "pch"),
                          str(tmp_path / "triton"))
    stats = RankStats()
    early = Artifacts(closed, flights[0], kernels, stats, ready_wait_s=0.5)
    assert early.get("fxgraph", KEY) is None and stats.claimed == 0
    go.set()
    closed.wait_opened(5)
    opened = Artifacts(closed, flights[1], kernels, stats)
    assert opened.get("fxgraph", KEY) is None and stats.claimed == 1  # the check can fail


def test_one_process_per_node_lists_the_index_for_the_job(tmp_path: Path) -> None:
    """The node's other processes of the job read the first one's listing; the next job
    lists again (it must see what was published since)."""
    store = open_store(str(tmp_path / "store"), fingerprint="fp")
    store.put("fxgraph", KEY, variant(b"stored"))
    listings = counting(store, "list_index")
    first = job(tmp_path, store, ["node", "node"])
    for ranks in (first, job(tmp_path, store, ["node", "node"])):
        for artifacts in ranks:
            artifacts.start_prefetch()
            artifacts._await_ready()
    assert len(listings) == 2  # once per job, not once per process
    assert all(a._listed == {("fxgraph", KEY): store.list_variants("fxgraph", KEY)}
               for a in first)
