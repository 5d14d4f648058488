import errno
import time

import faulty_fs
import pytest

from storage import StoreReadOnly, StoreUnavailable, open_store
from storage.retry import Retrier, is_transient

faulty_fs.register()


def _store(name: str, **kwargs):
    return open_store(f"faulty://{name}-{time.time_ns()}", fingerprint="fp", **kwargs)


@pytest.mark.parametrize("error", ["reset", "slowdown", "timeout"])
def test_transient_errors_are_retried(error):
    store = _store("retry", timeout_s=10)
    store.put("fx", "k", b"data")
    fs = store.fs
    fs.error, fs.fail_times, fs.failures, fs.calls = error, 2, 0, 0
    assert store.get_variants("fx", "k") == [b"data"]
    assert fs.failures == 2 and fs.calls == 2 + 2  # two failed tries, then ls + cat
    fs.fail_times, fs.failures = 2, 0
    store.put("fx", "k", b"more")
    assert fs.failures == 2 and store.stats.errors == 0


def test_store_down_raises_unavailable_within_timeout():
    store = _store("down", retries=50, timeout_s=1.0)
    store.put("fx", "k", b"data")
    store.fs.always = True
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        store.get_variants("fx", "k")
    assert time.monotonic() - t0 < 2.0
    msg = str(info.value)
    assert "faulty://down-" in msg and "ConnectionResetError" in msg and "unavailable" in msg
    with pytest.raises(StoreUnavailable):
        store.put("fx", "k", b"x")
    assert store.stats.errors == 2


def test_attempts_are_bounded():
    store = _store("bounded", retries=3, timeout_s=30)
    store.fs.always, store.fs.calls = True, 0
    with pytest.raises(StoreUnavailable, match="3 time"):
        store.get_variants("fx", "k")
    assert store.fs.calls == 3


def test_permanent_errors_are_not_retried():
    store = _store("denied", timeout_s=10)
    fs = store.fs
    fs.error, fs.always, fs.calls = "denied", True, 0
    with pytest.raises(StoreReadOnly, match="refused a write.*PermissionError"):
        store.put("fx", "k", b"x")
    assert fs.calls == 1


def test_a_bug_is_not_taken_for_a_store_outage():
    """A programming error must fail loudly, not switch the store off as if it were down."""
    calls = []

    def buggy():
        calls.append(1)
        raise TypeError("unsupported operand")

    with pytest.raises(TypeError, match="unsupported operand"):
        Retrier("u").call("get", buggy)
    assert calls == [1]


def test_open_store_on_a_down_store_raises_unavailable():
    with pytest.raises(StoreUnavailable):
        open_store(f"faulty://x-{time.time_ns()}", fingerprint="fp", retries=2, timeout_s=1,
                   storage_options={"always": True})


def test_retrier_passes_file_not_found_through():
    calls = []

    def missing():
        calls.append(1)
        raise FileNotFoundError("nope")

    with pytest.raises(FileNotFoundError):
        Retrier("u").call("get", missing)
    assert calls == [1]


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (OSError(errno.EBUSY, "SlowDown"), True),
        (OSError(errno.ETIMEDOUT, "timed out"), True),
        (OSError("503 Service Unavailable"), True),
        (type("EndpointConnectionError", (Exception,), {})(), True),
        (FileNotFoundError(), False),
        (PermissionError(errno.EACCES, "denied"), False),
        (OSError(errno.EINVAL, "bad request"), False),
        (ValueError("x"), False),
    ],
)
def test_is_transient(exc, transient):
    assert is_transient(exc) is transient
