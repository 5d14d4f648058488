"""The store fails under a running job: the job finishes, compiles what it cannot load, and
loses nothing that was published and verified.

S3 faults go through `s3proxy.FaultProxy` in front of moto's server, so s3fs, botocore and
the store's own retries meet them as they would meet real S3.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import S3_ENV
from tests.faults import common
from tests.faults.conftest import copy_store
from tests.multiprocess import jobs

pytestmark = pytest.mark.multiprocess


def _s3(proxy_url: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": proxy_url}


@pytest.mark.s3
def test_store_unreachable_at_start(tmp_path: Path) -> None:
    closed = jobs.free_port()  # nothing listens there
    t0 = time.monotonic()
    job = common.run(tmp_path, "unreachable", "s3://bucket/cache",
                     env={**S3_ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed}"}).check()
    common.assert_outputs_are_eager(job)
    warned = common.warnings(job)
    assert sorted(r for r, _ in warned) == [0, 1], warned  # one line per rank, no more
    assert all("s3://bucket/cache is unavailable" in text and "compiles for itself" in text
               for _, text in warned), warned
    # Each rank compiled for itself, with no claim and no wait; a rank that looked later
    # may hit what the other wrote into the node's local cache (PyTorch's own, shared).
    for stats in job.stats:
        assert stats["waits"] == 0 and stats["claimed"] == 0, stats
        found_locally = stats["fxgraph_cache_hit"] + stats["autograd_cache_hit"] > 0
        assert stats["fxgraph_cache_miss"] == 1 or found_locally, stats
    assert job.total("fxgraph_cache_miss") >= 1, job.stats
    assert "Traceback" not in job.output
    assert time.monotonic() - t0 < 150


@pytest.mark.s3
def test_store_gone_in_the_middle_of_a_job(tmp_path: Path, s3_url: str,
                                           proxy_factory) -> None:
    proxy = proxy_factory()
    pause = tmp_path / "pause"
    pause.mkdir()
    t0 = time.monotonic()
    proc = common.start(tmp_path, "gone", s3_url, ["--second", "--pause", str(pause)],
                        env=_s3(proxy.url))
    deadline = time.monotonic() + 200
    while not all((pause / f"f-done.rank{r}").exists() for r in (0, 1)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.1)
    before = common.digests(s3_url)
    assert any(kind == "fxgraph" for kind, _, _ in before), before
    proxy.stop()  # the store is gone before g is looked up
    (pause / "go").touch()
    job = jobs.finish(proc, tmp_path / "out-gone", started=t0).check()
    common.assert_outputs_are_eager(job, second=True)
    common.assert_no_wait_past_deadline(job)
    for out in job.outs:  # g: the retries are bounded (PT2CC_STORE_TIMEOUT_S=5), then compile
        assert out["g_s"] < 60, out
    # f once, g again (the ranks of a node share Inductor's local cache)
    assert sum(s["fxgraph_cache_miss"] for s in job.stats) >= 2, common.brief(job)
    for stats in job.stats:
        assert stats["store_errors"] >= 1, common.brief(job)
    warned = common.warnings(job)
    assert sorted(r for r, _ in warned) == [0, 1], warned
    assert all("store failed" in text and "compiling locally" in text for _, text in warned)
    # What was published before the outage is still there and verifies.
    assert before <= common.digests(s3_url)
    common.verify(s3_url)


@pytest.mark.s3
def test_slow_store(tmp_path: Path, s3_url: str, proxy_factory) -> None:
    proxy = proxy_factory(latency_s=0.15)
    t0 = time.monotonic()
    job = common.run(tmp_path, "slow", s3_url, env=_s3(proxy.url)).check()
    common.assert_outputs_are_eager(job)
    common.assert_no_wait_past_deadline(job)
    assert proxy.requests >= 5 and proxy.methods.get("PUT", 0) >= 2, proxy.methods
    # One rank compiled, the other waited for it and loaded: latency broke nothing.
    assert sorted(s["fxgraph_cache_miss"] for s in job.stats) == [0, 1], job.stats
    assert common.warnings(job) == []
    assert common.digests(s3_url)
    common.verify(s3_url)
    assert time.monotonic() - t0 < 150


@pytest.mark.s3
def test_throttling_bursts(tmp_path: Path, s3_url: str, proxy_factory) -> None:
    proxy = proxy_factory(slowdown=(10, 3))  # 3 of every 10 requests: 503 SlowDown
    t0 = time.monotonic()
    job = common.run(tmp_path, "slowdown", s3_url, env=_s3(proxy.url)).check()
    common.assert_outputs_are_eager(job)
    common.assert_no_wait_past_deadline(job)
    assert proxy.injected["slowdown"] >= 3, proxy.injected
    published = common.digests(s3_url)
    fx_keys = {key for kind, key, _ in published if kind == "fxgraph"}
    # Throttled, yet each graph compiled once in the job: the other rank loaded it.
    assert fx_keys and sum(s["fxgraph_cache_miss"] for s in job.stats) == len(fx_keys), (
        common.brief(job), published)
    common.verify(s3_url)
    assert time.monotonic() - t0 < 180


def _entries(store: Path, kind: str = "*") -> list[Path]:
    """The index entries (named by digest; a key's components.json sits beside them)."""
    return [e for e in store.glob(f"v1/*/index/{kind}/*/*") if e.name != "components.json"]


def _upload(store: Path, url: str, keep) -> None:
    """Copy the index entries `keep(kind, key, mtime)` accepts, and their objects, to `url`."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    root = url.removeprefix("s3://")
    for entry in _entries(store):
        kind, key = entry.parent.parent.name, entry.parent.name
        if not keep(kind, key, entry.stat().st_mtime):
            continue
        rel = entry.relative_to(store)
        fs.pipe_file(f"{root}/{rel}", entry.read_bytes())
        (obj,) = store.glob(f"v1/*/objects/{entry.name[:2]}/{entry.name}")
        fs.pipe_file(f"{root}/{obj.relative_to(store)}", obj.read_bytes())


@pytest.mark.s3
def test_read_only_store(tmp_path: Path, s3_url: str, seed: dict,
                         proxy_factory) -> None:
    """The store holds g but not f, and refuses writes: f is compiled, g still loads."""
    fx = sorted((e.stat().st_mtime, e.parent.name)
                for e in _entries(seed["store"], "fxgraph"))
    assert len(fx) == 2, fx
    f_key = fx[0][1]  # f was compiled (and published) before g
    _upload(seed["store"], s3_url, lambda kind, key, _: kind != "fxgraph" or key != f_key)
    before = common.digests(s3_url)
    proxy = proxy_factory(read_only=True)
    job = common.run(tmp_path, "readonly", s3_url, ["--second"], env=_s3(proxy.url)).check()
    common.assert_outputs_are_eager(job, second=True)
    common.assert_no_wait_past_deadline(job)
    assert proxy.injected["denied"] >= 1, proxy.injected
    assert common.digests(s3_url) == before  # nothing was written
    # Only f was compiled (once on the node): g came from the store although publishing f
    # had failed.
    for stats in job.stats:
        assert stats["fxgraph_cache_hit"] >= 1, common.brief(job)
    warned = common.warnings(job)
    assert warned and len(warned) <= 2, warned
    assert all("publishing" in text for _, text in warned), warned


def test_damaged_objects_are_refused_and_quarantined(tmp_path: Path, seed: dict) -> None:
    """Truncated and corrupt FX objects, and a snapshot entry whose object is gone."""
    store = copy_store(seed, tmp_path / "store")
    fx = sorted((e.stat().st_mtime, e.name) for e in _entries(store, "fxgraph"))
    assert len(fx) == 2, fx
    (trunc,) = store.glob(f"v1/*/objects/*/{fx[0][1]}")
    (corrupt,) = store.glob(f"v1/*/objects/*/{fx[1][1]}")
    trunc.write_bytes(trunc.read_bytes()[: trunc.stat().st_size // 2])
    data = bytearray(corrupt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    (snap_entry,) = store.glob("v1/*/snapshots/*/*")
    (snap_obj,) = store.glob(f"v1/*/objects/*/{snap_entry.name}")
    snap_obj.unlink()
    intact = {p.name for p in store.glob("v1/*/objects/*/*")} - {trunc.name, corrupt.name}
    assert intact

    job = common.run(tmp_path, "damaged", str(store), ["--second"], snapshot=True).check()
    common.assert_outputs_are_eager(job, second=True)
    common.assert_no_wait_past_deadline(job)
    quarantined = {p.name.split(".")[0] for p in store.glob("v1/*/quarantine/*")}
    assert quarantined == {trunc.name, corrupt.name}
    assert sum(s["store"]["quarantined"] for s in job.stats) >= 2
    # Both graphs were compiled again on one rank and loaded by the other: none was loaded
    # from a bad object (PyTorch counts a second miss when an intact AOT entry names them).
    assert sorted(s["published"] > 0 for s in job.stats) == [False, True], common.brief(job)
    assert sorted(s["fxgraph_cache_hit"] for s in job.stats) == [0, 2], common.brief(job)
    assert "refused and quarantined" in job.output
    assert {p.name for p in store.glob("v1/*/objects/*/*")} >= intact
    report = json.loads(common.pt2cc("verify", str(store), "--json").stdout)
    assert report["bad"] == []  # only the entries of the refused objects dangle
    assert {d["digest"] for d in report["dangling"]} <= {trunc.name, corrupt.name,
                                                         snap_entry.name}, report


@pytest.fixture
def read_only_dir(tmp_path: Path):
    """A directory on a read-only tmpfs (writes fail with EROFS, even for root)."""
    path = tmp_path / "ro-node"
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        (path / ".locks").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_node_tier_unwritable(tmp_path: Path, seed: dict, read_only_dir: Path) -> None:
    """The node-local copy cannot be written: objects still load from the store."""
    with pytest.raises(OSError):
        (read_only_dir / "probe").write_bytes(b"x")
    store = copy_store(seed, tmp_path / "store")
    job = common.run(tmp_path, "ro-node", str(store), ["--second"],
                     env={"PT2CC_NODE_CACHE_DIR": str(read_only_dir)}).check()
    common.assert_outputs_are_eager(job, second=True)
    common.assert_no_wait_past_deadline(job)
    for stats in job.stats:
        assert stats["fxgraph_cache_miss"] == 0 and stats["fxgraph_cache_hit"] == 2, \
            common.brief(job)
    assert os.listdir(read_only_dir) == [".locks"]
