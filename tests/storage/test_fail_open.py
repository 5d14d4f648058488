"""The fail-open wrapper: an outage is a miss and one warning, never an exception."""

import logging
import threading
import time

import faulty_fs
import pytest

from storage import open_store
from storage.fail_open import FailOpenStore

FP = "fp"
faulty_fs.register()


def wrap(inner, **settings) -> FailOpenStore:
    return FailOpenStore(inner.url, lambda: inner, **settings)


def test_an_outage_is_a_miss_then_the_store_is_left_alone(caplog):
    inner = open_store(f"faulty://fail-open-{time.time_ns()}", fingerprint=FP, retries=2,
                       timeout_s=1)
    inner.put("fx", "k", b"v")
    store = wrap(inner, deadline_s=5, retry_after_s=60)
    inner.fs.always = True
    with caplog.at_level(logging.WARNING):
        assert store.list_variants("fx", "k") == []
        assert store.put("fx", "k2", b"v2") is None
        assert store.list_index() == {}
    assert store.down and store.failures == 1  # later calls did not even try
    assert sum("store failed while" in r.message for r in caplog.records) == 1


def test_a_refused_write_makes_it_read_only_but_still_readable(caplog):
    inner = open_store(f"faulty://read-only-{time.time_ns()}", fingerprint=FP, timeout_s=1)
    digest = inner.put("fx", "k", b"v")
    store = wrap(inner, deadline_s=5)
    inner.fs.error, inner.fs.always = "denied", True
    with caplog.at_level(logging.WARNING):
        assert store.put("fx", "k2", b"v2") is None
        assert store.read_only and not store.down
        assert store.put("fx", "k3", b"v3") is None  # not tried again
    inner.fs.always = False
    assert store.get_object(digest) == b"v"
    assert sum("publishing nothing more" in r.message for r in caplog.records) == 1


def test_calls_still_work_while_the_interpreter_exits(tmp_path):
    """At exit (atexit: the last snapshot) a thread pool takes no new work: run inline."""
    store = wrap(open_store(str(tmp_path), fingerprint=FP), deadline_s=5)
    store._io.shutdown()
    assert store.put_snapshot("job", b"snapshot") is not None
    assert store.get_snapshot("job") == b"snapshot"


def test_a_bug_is_not_swallowed(tmp_path):
    store = wrap(open_store(str(tmp_path), fingerprint=FP), deadline_s=5)
    with pytest.raises(TypeError):
        store.put("fx", "k", None)  # type: ignore[arg-type]


def test_calls_wait_for_the_store_to_open(tmp_path):
    """The store opens on the wrapper's thread while the caller goes on; a call in the
    meantime waits for it (within its deadline) instead of missing."""
    inner = open_store(str(tmp_path), fingerprint=FP)
    digest = inner.put("fx", "k", b"v")
    go = threading.Event()
    store = FailOpenStore(inner.url, lambda: inner if go.wait(10) else None, deadline_s=10)
    assert not store.opened and store.stats.gets == 0
    found: list = []
    caller = threading.Thread(target=lambda: found.append(store.list_variants("fx", "k")))
    caller.start()
    caller.join(0.3)
    assert caller.is_alive() and not found  # waiting for the open, not missing
    go.set()
    caller.join(10)
    assert found == [[digest]] and store.opened


def test_a_store_that_could_not_be_opened_is_off(tmp_path, caplog):
    """The opener said why (it logs); the calls then miss without a warning each."""
    store = FailOpenStore("s3://nowhere/x", lambda: None, deadline_s=5)
    with caplog.at_level(logging.WARNING):
        assert store.list_index() == {} and store.get_object("ab" * 32) is None
        assert store.put("fx", "k", b"v") is None and store.put_snapshot("t", b"s") is None
    assert not store.opened and not store.down and store.failures == 0
    assert caplog.records == []


def test_an_open_slower_than_the_deadline_is_missed_around_not_waited_for(tmp_path, caplog):
    inner = open_store(str(tmp_path), fingerprint=FP)
    digest = inner.put("fx", "k", b"v")
    go = threading.Event()
    store = FailOpenStore(inner.url, lambda: inner if go.wait(10) else None, deadline_s=0.3)
    with caplog.at_level(logging.INFO, logger="storage.fail_open"):
        assert store.list_variants("fx", "k") == []  # waited its deadline, then missed
        t0 = time.monotonic()
        assert store.get_object(digest) is None
        assert time.monotonic() - t0 < 0.1  # did not wait again
    assert [r.levelname for r in caplog.records] == ["INFO"]
    assert "still opening" in caplog.records[0].message and not store.down
    go.set()
    store._opening.result(5)
    assert store.list_variants("fx", "k") == [digest]  # usable once it has opened
