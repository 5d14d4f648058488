import logging
import os
import time
from pathlib import Path

import fsspec
import pytest

from storage import StoreConfigError, open_store
from storage.maintenance import scan
from storage.retry import Retrier
from storage.sealed import digest_of

FP = "fp-test"


def entries_of(store):
    """Every index and snapshot entry of the store's fingerprint."""
    return scan(store.fs, store.root, Retrier(store.url), [store.fingerprint]).entries


def test_round_trip_and_miss(store_url):
    store = open_store(store_url, fingerprint=FP)
    digest = store.put("fxgraph", "fabc", b"payload")
    assert digest == digest_of(b"payload")
    assert store.get_variants("fxgraph", "fabc") == [b"payload"]
    assert store.get_variants("fxgraph", "other") == []
    assert store.get_variants("aotautograd", "fabc") == []
    s = store.stats.as_dict()
    assert (s["gets"], s["hits"], s["puts"], s["errors"]) == (3, 1, 1, 0)
    assert s["bytes_read"] > len(b"payload") and s["bytes_written"] > len(b"payload")


def test_several_variants_and_idempotent_put(store_url):
    store = open_store(store_url, fingerprint=FP)
    key = "pt2:ab/cd:ef"
    for data in (b"v1", b"v2", b"v3", b"v2"):
        store.put("autotune", key, data)
    assert sorted(store.get_variants("autotune", key)) == [b"v1", b"v2", b"v3"]
    entries = [e for e in entries_of(store) if e.section == "index"]
    assert {(e.kind, e.key) for e in entries} == {("autotune", key)}
    assert sorted(e.size for e in entries) == [8, 8, 8]


def test_newest_first(tmp_path):
    store = open_store(str(tmp_path), fingerprint=FP)
    for i, data in enumerate([b"old", b"mid", b"new"]):
        digest = store.put("fx", "k", data)
        entry = os.path.join(store.layout.variants_dir("fx", "k"), digest)
        os.utime(entry, (1000 + i, 1000 + i))
    assert store.get_variants("fx", "k") == [b"new", b"mid", b"old"]


def test_index_listing_names_every_variant_of_every_key(store_url):
    """One recursive listing serves a job's lookups; objects are then fetched by digest."""
    store = open_store(store_url, fingerprint=FP)
    other = open_store(store_url, fingerprint="fp-other")
    assert store.list_index() == {}
    a = [store.put("fxgraph", "pt2:fx::a/b:c1", v) for v in (b"a1", b"a2", b"a3")]
    b = store.put("aotautograd", "k.b", b"b1")
    other.put("fxgraph", "pt2:fx::a/b:c1", b"foreign")
    store.put_snapshot("job", b"snap")
    listed = store.list_index()
    assert set(listed) == {("fxgraph", "pt2:fx::a/b:c1"), ("aotautograd", "k.b")}
    assert sorted(listed[("fxgraph", "pt2:fx::a/b:c1")]) == sorted(a)
    assert listed[("aotautograd", "k.b")] == [b]
    assert sorted(store.list_variants("fxgraph", "pt2:fx::a/b:c1")) == sorted(a)
    assert store.list_variants("fxgraph", "absent") == []
    assert store.get_object(b) == b"b1"
    assert store.get_object(digest_of(b"never stored")) is None


def test_fingerprints_are_separate_namespaces(store_url):
    a = open_store(store_url, fingerprint="fp-a")
    b = open_store(store_url, fingerprint="fp-b")
    a.put("fx", "k", b"from-a")
    assert b.get_variants("fx", "k") == []
    assert a.get_variants("fx", "k") == [b"from-a"]


def test_snapshots(store_url):
    store = open_store(store_url, fingerprint=FP)
    assert store.get_snapshot("job/1") is None
    store.put_snapshot("job/1", b"mega-cache")
    assert store.get_snapshot("job/1") == b"mega-cache"
    assert store.get_snapshot("job/2") is None
    assert [e.key for e in entries_of(store) if e.section == "snapshots"] == ["job/1"]


def test_keys_with_odd_characters(store_url):
    store = open_store(store_url, fingerprint=FP)
    keys = ["", ".", "..", "a/../b", "pt2:x*?[y]", "ключ"]
    for k in keys:
        store.put("kind/with:colon", k, k.encode() + b"!")
    for k in keys:
        assert store.get_variants("kind/with:colon", k) == [k.encode() + b"!"]
    assert sorted(e.key for e in entries_of(store)) == sorted(keys)


def _object_path(store, digest):
    return store.layout.object_path(digest)


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "empty"])
def test_bad_object_quarantined_and_skipped(store_url, damage, caplog):
    store = open_store(store_url, fingerprint=FP)
    good = store.put("fx", "k", b"good variant")
    bad = store.put("fx", "k", b"bad variant" * 100)
    path = _object_path(store, bad)
    blob = store.fs.cat_file(path)
    damaged = {"corrupt": blob[:-5] + b"XXXXX", "truncated": blob[: len(blob) // 2],
               "empty": b""}[damage]
    store.fs.pipe_file(path, damaged)
    with caplog.at_level(logging.WARNING, logger="storage"):
        assert store.get_variants("fx", "k") == [b"good variant"]
        assert store.get_variants("fx", "k") == [b"good variant"]
    assert store.stats.quarantined == 1
    warnings = [r for r in caplog.records if "quarantined" in r.getMessage()]
    assert len(warnings) == 1 and bad in warnings[0].getMessage()
    assert not store.fs.exists(path)
    store.fs.invalidate_cache()
    moved = store.fs.ls(store.layout.quarantine_dir, detail=False)
    assert len(moved) == 1 and os.path.basename(moved[0]).startswith(bad + ".")
    assert store.fs.exists(_object_path(store, good))


def test_republish_after_quarantine(store_url):
    store = open_store(store_url, fingerprint=FP)
    digest = store.put("fx", "k", b"data")
    store.fs.pipe_file(_object_path(store, digest), b"garbage")
    assert store.get_variants("fx", "k") == []
    store.put("fx", "k", b"data")
    assert store.get_variants("fx", "k") == [b"data"]


def test_signing(store_url):
    unsigned = open_store(store_url, fingerprint=FP)
    signed = open_store(store_url, fingerprint=FP, signing_key=b"key-1")
    other = open_store(store_url, fingerprint=FP, signing_key=b"key-2")
    signed.put("fx", "signed", b"s")
    unsigned.put("fx", "unsigned", b"u")
    assert signed.get_variants("fx", "signed") == [b"s"]
    assert unsigned.get_variants("fx", "signed") == [b"s"]  # no key: digest only
    assert other.get_variants("fx", "signed") == []  # wrong key: refused
    assert other.stats.quarantined == 1
    assert signed.get_variants("fx", "unsigned") == []  # key configured: unsigned refused
    assert signed.stats.quarantined == 1
    assert unsigned.get_variants("fx", "unsigned") == []  # it was moved aside


def test_signing_key_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PT2CC_SIGNING_KEY", "from-env")
    store = open_store(str(tmp_path), fingerprint=FP)
    assert store.signed
    digest = store.put("fx", "k", b"x")
    assert open_store(str(tmp_path), fingerprint=FP, signing_key=b"from-env").get_variants(
        "fx", "k") == [b"x"]
    assert store.fs.cat_file(_object_path(store, digest))[5] & 1


def test_missing_object_is_a_miss(store_url):
    store = open_store(store_url, fingerprint=FP)
    digest = store.put("fx", "k", b"x")
    store.fs.rm_file(_object_path(store, digest))
    assert store.get_variants("fx", "k") == []
    assert store.stats.errors == 0 and store.stats.quarantined == 0


def test_local_writes_leave_no_temp_files(tmp_path):
    store = open_store(str(tmp_path), fingerprint=FP)
    for i in range(5):
        store.put("fx", f"k{i}", os.urandom(1000))
    names = [n for _, _, files in os.walk(tmp_path) for n in files]
    assert len(names) == 10 and not [n for n in names if n.startswith(".tmp")]


def test_memory_url_and_storage_options():
    store = open_store(f"memory://pt2cc-{time.time_ns()}", fingerprint=FP,
                       storage_options={})
    store.put("fx", "k", b"m")
    assert store.get_variants("fx", "k") == [b"m"]
    assert isinstance(store.fs, fsspec.AbstractFileSystem)


@pytest.mark.parametrize("fp", ["", "a/b", "..", ".hidden", "x y"])
def test_bad_fingerprint(tmp_path, fp):
    with pytest.raises(StoreConfigError, match="fingerprint"):
        open_store(str(tmp_path), fingerprint=fp)


def test_storage_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, storage, storage.maintenance; assert 'torch' not in sys.modules"
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
