"""Config parsing, the bundle format and kernel-library carrying: the small parts."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest

from coordinator import bundle
from coordinator.config import Config
from coordinator.errors import ConfigError
from coordinator.kernels import KernelFiles
from coordinator.snapshot import Snapshots
from coordinator.stats import RankStats
from storage.units import parse_size


def test_env_and_flags_build_one_config() -> None:
    env = {"PT2CC_CACHE": "s3://b/p", "PT2CC_WAIT_TIMEOUT_S": "12.5",
           "PT2CC_NORMALIZE_DEVICES": "off", "PT2CC_NODE_CACHE_MAX_BYTES": "2G"}
    cfg = Config.from_env(env, stats_file="/tmp/s")
    assert cfg.cache_url == "s3://b/p" and cfg.wait_timeout_s == 12.5
    assert cfg.normalize_devices is False and cfg.node_cache_max_bytes == 2 * 2**30
    assert Config.from_env(env, cache_url="/local").cache_url == "/local"  # flags win


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PT2CC_WAIT_TIMEOUT_S": "soon"}, "PT2CC_WAIT_TIMEOUT_S='soon' is not a valid float"),
        ({"PT2CC_SNAPSHOT": "maybe"}, "PT2CC_SNAPSHOT='maybe' is not a valid bool"),
        ({"PT2CC_HEARTBEAT_S": "20"}, "must be at least twice heartbeat_s"),
        ({"PT2CC_LOG_LEVEL": "LOUD"}, "log level must be"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("'", "'")):
        Config.from_env(env)


def test_sizes() -> None:
    assert parse_size("512M") == 512 * 2**20
    assert parse_size("1.5GiB") == int(1.5 * 2**30)
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")


def test_bundle_round_trip_and_damage() -> None:
    blob = bundle.pack(b'{"data": "x"}', {"ab/k.so": b"\x7fELF", "cd/q.so": b""})
    assert bundle.unpack(blob) == (b'{"data": "x"}', {"ab/k.so": b"\x7fELF", "cd/q.so": b""},
                                     {})
    with_meta = bundle.pack(b"", {}, {"entries": {"d": "n"}})
    assert bundle.unpack(with_meta).meta == {"entries": {"d": "n"}}
    with pytest.raises(bundle.BundleError):
        bundle.unpack(b"not ours")
    with pytest.raises(bundle.BundleError):
        bundle.unpack(blob[:-2])


def test_kernel_files_take_new_and_place(tmp_path: Path) -> None:
    src, dst = tmp_path / "a", tmp_path / "b"
    (src / "xy").mkdir(parents=True)
    (src / "xy" / "old.so").write_bytes(b"old")
    kernels = KernelFiles(str(src), str(tmp_path / "pch-a"), str(tmp_path / "tr-a"))
    (src / "xy" / "new.so").write_bytes(b"new")
    (src / "xy" / "new.cpp").write_text("not a library")
    assert kernels.take_new() == {"xy/new.so": b"new"}
    assert kernels.take_new() == {}
    receiver = KernelFiles(str(dst), str(tmp_path / "pch-b"), str(tmp_path / "tr-b"))
    placed = receiver.place({"xy/new.so": b"new", "../evil.so": b"x", "xy/../../e.so": b"x",
                             "pch/h.h.gch": b"pch", "pch/../x": b"x", "abc/x.so": b"x",
                             "triton/0/HASH/k.cubin": b"cubin", "triton/../x": b"x",
                             "triton/a/b/c/d/e": b"x"})
    assert placed == 3
    assert (dst / "xy" / "new.so").read_bytes() == b"new"
    assert (tmp_path / "pch-b" / "h.h.gch").read_bytes() == b"pch"
    assert (tmp_path / "tr-b" / "0" / "HASH" / "k.cubin").read_bytes() == b"cubin"
    assert receiver.snapshot_files() == {"xy/new.so": b"new", "pch/h.h.gch": b"pch",
                                         "triton/0/HASH/k.cubin": b"cubin"}
    assert not any(p.name.endswith(".so") for p in tmp_path.iterdir())
    assert sorted(os.listdir(dst)) == ["xy"]


def test_snapshot_carries_this_jobs_headers_and_triton_files(tmp_path: Path) -> None:
    """Their default dirs are per user: a snapshot takes the headers the job used or built
    and the Triton files it built or received; not what other runs left there, nor another
    environment's header it received but did not use."""
    root, pch, tr = tmp_path / "inductor", tmp_path / "pch", tmp_path / "triton"
    for path, data in [(root / "ab" / "k.so", b"lib"), (pch / "mine.h", b"h"),
                       (pch / "mine.h.gch", b"gch"), (pch / "old.h", b"h"),
                       (pch / "old.h.gch", b"old gch"), (tr / "OLD" / "k.cubin", b"old"),
                       (tr / "PEER" / "k.cubin", b"peer")]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    kernels = KernelFiles(str(root), str(pch), str(tr))
    assert sorted(kernels.snapshot_files()) == ["ab/k.so"]  # every library, as before
    kernels.place({"pch/other-env.h.gch": b"received"})
    assert sorted(kernels.snapshot_files()) == ["ab/k.so", "pch/other-env.h.gch"]  # none used
    kernels.note_header_used(str(pch / "mine.h"))
    kernels.note_header_used(str(tmp_path / "elsewhere" / "old.h"))
    (tr / "BUILT").mkdir()
    (tr / "BUILT" / "k.cubin").write_bytes(b"built")
    (pch / "built.h.gch").write_bytes(b"built here")
    kernels.place({"triton/NEW/k.cubin": b"received"})
    kernels.note_received(["triton/PEER/k.cubin"])  # a snapshot another rank placed
    assert sorted(kernels.snapshot_files()) == [
        "ab/k.so", "pch/built.h.gch", "pch/mine.h", "pch/mine.h.gch", "triton/BUILT/k.cubin",
        "triton/NEW/k.cubin", "triton/PEER/k.cubin"]
    assert kernels.built_count() == 2  # neither here at the start nor received
    (root / "ef").mkdir()
    (root / "ef" / "rebuilt.so").write_bytes(b"a library the snapshot lacked")
    assert kernels.built_count() == 3


def test_a_file_counted_as_built_stays_counted(tmp_path: Path) -> None:
    """Another rank of the node builds a library: it counts as built here until this rank
    loads the entry carrying it, and must go on counting, or the exit's publish, which
    compares counts, misses what a snapshot published in between lacked. A file placed
    from the store never counts."""
    root = tmp_path / "inductor"
    kernels = KernelFiles(str(root), str(tmp_path / "pch"), str(tmp_path / "triton"))
    (root / "ab").mkdir(parents=True)
    (root / "ab" / "peer.so").write_bytes(b"built by the other rank")
    assert kernels.built_count() == 1
    kernels.note_received(["ab/peer.so"])  # this rank loads the entry that carries it
    kernels.place({"cd/stored.so": b"from the store"})
    assert kernels.built_count() == 1


def test_no_quiet_snapshot_while_a_compile_runs(tmp_path: Path) -> None:
    """The quiet timer restarts at a compile's end, not its start: a rank waiting inside
    its compile for another rank's publishes nothing until that compile has ended."""
    checks: list[int] = []
    kernels = KernelFiles(str(tmp_path / "i"), str(tmp_path / "p"), str(tmp_path / "t"))
    snapshots = Snapshots(None, "tag", kernels, publisher=True, quiet_s=0.05,  # type: ignore[arg-type]
                          compiled_count=lambda: checks.append(1) or 0,
                          stats=RankStats(rank=0), entry_names={})
    snapshots.compile_ended()
    snapshots.compile_started()
    time.sleep(0.3)
    assert checks == []  # the timer did not fire mid-compile
    snapshots.compile_ended()
    deadline = time.monotonic() + 10
    while not checks and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checks == [1]  # quiet after the end: it looks for something to publish


def test_triton_kernels_travel_with_the_graph_and_their_groups_point_home(tmp_path: Path) -> None:
    """Triton names a group's members by absolute path; another node's cache is elsewhere."""
    tr_a, tr_b = tmp_path / "tr-a", tmp_path / "tr-b"
    kernels = KernelFiles(str(tmp_path / "a"), str(tmp_path / "pch-a"), str(tr_a))
    (tr_a / "HASH").mkdir(parents=True)
    (tr_a / "HASH" / "k.cubin").write_bytes(b"cubin")
    group = {"child_paths": {"k.cubin": str(tr_a / "HASH" / "k.cubin")}}
    (tr_a / "HASH" / "__grp__k.json").write_text(json.dumps(group))
    (tr_a / "tmp.pid_1_2").mkdir()
    (tr_a / "tmp.pid_1_2" / "half.cubin").write_bytes(b"half-written")
    files = kernels.take_new()
    assert sorted(files) == ["triton/HASH/__grp__k.json", "triton/HASH/k.cubin"]
    receiver = KernelFiles(str(tmp_path / "b"), str(tmp_path / "pch-b"), str(tr_b))
    assert receiver.place(files) == 2
    placed = json.loads((tr_b / "HASH" / "__grp__k.json").read_text())
    assert placed == {"child_paths": {"k.cubin": str(tr_b / "HASH" / "k.cubin")}}
    assert (tr_b / "HASH" / "k.cubin").read_bytes() == b"cubin"


def test_snapshot_compression_reads_earlier_zlib_snapshots() -> None:
    import zlib

    from coordinator.snapshot import compress, open_decompressed

    data = b"precompiled header " * 1000
    assert compress(data).startswith(b"\x28\xb5\x2f\xfd")
    with open_decompressed(compress(data)) as stream:
        assert stream.read() == data
    assert open_decompressed(zlib.compress(data, 1)).read() == data


def test_snapshot_streams_its_files_to_disk(tmp_path: Path) -> None:
    """A file larger than the reader's chunk goes to disk whole; what exists is skipped, the
    rest still read in order; a truncated stream is a damaged bundle."""
    from coordinator.snapshot import compress, open_decompressed

    big = os.urandom(3 * bundle.CHUNK + 5)
    blob = compress(bundle.pack(b"mega", {"xy/k.so": b"lib", "pch/h.h.gch": big,
                                          "zz/l.so": b"last"}, {"entries": {}}))
    (tmp_path / "a" / "xy").mkdir(parents=True)
    (tmp_path / "a" / "xy" / "k.so").write_bytes(b"already here")
    kernels = KernelFiles(str(tmp_path / "a"), str(tmp_path / "pch"), str(tmp_path / "tr"))
    with open_decompressed(blob) as stream:
        reader = bundle.Reader(stream)
        assert reader.payload == b"mega" and reader.meta == {"entries": {}}
        assert kernels.place_from(reader.files()) == 2
        reader.check_end()
    assert (tmp_path / "pch" / "h.h.gch").read_bytes() == big
    assert (tmp_path / "a" / "xy" / "k.so").read_bytes() == b"already here"
    assert (tmp_path / "a" / "zz" / "l.so").read_bytes() == b"last"
    raw = bundle.pack(b"mega", {"pch/h.h.gch": big})
    with pytest.raises(bundle.BundleError, match="length mismatch"):
        reader = bundle.Reader(io.BytesIO(raw[:-7]))
        KernelFiles(str(tmp_path / "b"), str(tmp_path / "pch-b"), "").place_from(reader.files())
    assert not (tmp_path / "pch-b" / "h.h.gch").exists()  # nothing partial left in place


