"""A store that never fails its caller: an outage becomes a miss, and one warning.

Every call runs on a thread of this wrapper's own, within a deadline: a store error's
traceback (fsspec keeps exceptions in reference cycles) can then only pin this thread's
frames, never the caller's. (PyTorch resets DDPOptimizer's `fakify_first_call` in a
`__del__` of a compile-thread frame: a late reset broke the next bucket's compile.)
After a failure the store is left alone for `retry_after_s`: lookups miss, publishes are
skipped. A refused write makes the store read-only: reads go on, writes stop.

The store is opened on that thread too, within the same deadline for whoever waits for it:
a store that is slow to answer delays no one past it, and calls made meanwhile miss. An
opener that returns None leaves the store off: every call misses, silently.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as DeadlineExceeded
from typing import Any, TypeVar

from storage.api import Store
from storage.errors import StoreReadOnly, StoreUnavailable
from storage.store import StoreStats

log = logging.getLogger(__name__)
T = TypeVar("T")
_OFF = object()  # what a call returns, on the store's thread, when there is no store


class FailOpenStore:
    """Wraps the store `opener` returns; implements the same interface and never raises a
    store error."""

    def __init__(self, url: str, opener: Callable[[], Store | None], *, deadline_s: float,
                 retry_after_s: float = 60.0) -> None:
        self._deadline_s = deadline_s
        self._retry_after_s = retry_after_s
        self._down_until = 0.0
        self._refused = False
        self._late = False  # a call's deadline passed while the store was still opening
        self._lock = threading.Lock()
        self.url = url
        self.failures = 0
        self._io = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pt2cc-store")
        self._opening = self._io.submit(self._open, opener)  # first: never queued behind calls
        # Python stops its thread pools (asyncio's among them: s3fs resolves hosts there)
        # before atexit handlers run; a script shorter than the open must not fail it.
        threading._register_atexit(self._finish_opening)  # type: ignore[attr-defined]

    @property
    def opened(self) -> bool:
        """The store is open and usable (without waiting: False while it is opening)."""
        return self._opened() is not None

    @property
    def stats(self) -> StoreStats:
        store = self._opened()
        return store.stats if store is not None else StoreStats()

    @property
    def read_only(self) -> bool:
        store = self._opened()
        return self._refused or (store is not None and store.read_only)

    @property
    def down(self) -> bool:
        return time.monotonic() < self._down_until

    def list_index(self) -> dict[tuple[str, str], list[str]]:
        return self._call("listing the index", {}, "list_index")

    def list_variants(self, kind: str, key: str) -> list[str]:
        return self._call(f"looking up {kind} {key}", [], "list_variants", kind, key)

    def get_object(self, digest: str) -> bytes | None:
        return self._call(f"fetching object {digest[:12]}", None, "get_object", digest)

    def get_snapshot(self, tag: str) -> bytes | None:
        return self._call(f"fetching snapshot {tag!r}", None, "get_snapshot", tag)

    def put(self, kind: str, key: str, data: bytes,
            on_node: Callable[[str], None] | None = None) -> str | None:
        return self._write(f"publishing {kind} {key}", "put", kind, key, data, on_node)

    def put_snapshot(self, tag: str, data: bytes) -> str | None:
        return self._write(f"publishing snapshot {tag!r}", "put_snapshot", tag, data)

    def get_components(self, kind: str, key: str) -> dict[str, list[str]] | None:
        return self._call(f"reading components of {kind} {key}", None, "get_components",
                          kind, key)

    def environments(self) -> dict[str, dict[str, str]]:
        return self._call("listing environments", {}, "environments")

    def put_components(self, kind: str, key: str, components: dict[str, list[str]]) -> None:
        self._write(f"publishing components of {kind} {key}", "put_components", kind, key,
                    components)

    def describe_environment(self, fields: dict[str, str]) -> None:
        self._write("describing the environment", "describe_environment", fields)

    def record_use(self, job: str, digests: list[str]) -> None:
        self._write(f"recording what job {job} used", "record_use", job, digests)

    def _open(self, opener: Callable[[], Store | None]) -> Store | None:
        try:
            return opener()
        except Exception:
            log.exception("opening store %s failed; every call misses", self.url)
            return None

    def wait_opened(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the open to end; whether the store is open."""
        with contextlib.suppress(DeadlineExceeded):
            self._opening.result(timeout=timeout_s)
        return self.opened

    def _finish_opening(self) -> None:
        self.wait_opened(self._deadline_s)

    def _opened(self) -> Store | None:
        return self._opening.result() if self._opening.done() else None

    def _write(self, what: str, method: str, *args: object) -> Any:
        return None if self.read_only else self._call(what, None, method, *args)

    def _run(self, method: str, *args: object) -> object:
        """On the store's thread: wait for the open, then call the store."""
        store = self._opening.result()
        return _OFF if store is None else getattr(store, method)(*args)

    def _call(self, what: str, missing: T, method: str, *args: object) -> T:
        if self.down or (self._late and not self._opening.done()):
            return missing
        try:
            try:
                future = self._io.submit(self._run, method, *args)
            except RuntimeError:  # the interpreter is exiting (atexit): no new threads
                result = self._run(method, *args) if self._opening.done() else _OFF
            else:
                result = future.result(timeout=self._deadline_s)
            return missing if result is _OFF else result  # type: ignore[return-value]
        except StoreReadOnly as exc:
            self._failed()
            with self._lock:
                first, self._refused = not self._refused, True
            if first:
                log.warning("store refused %s (%s); publishing nothing more, still loading "
                            "from it", what, exc)
        except DeadlineExceeded as exc:
            if self._opening.done():
                self._unavailable(what, exc)
            elif not self._late:
                # Calls miss without waiting until it has opened; the opener says how the
                # open ends (a warning if it fails).
                self._late = True
                log.info("store %s still opening after %.0f s; compiling locally until it "
                         "has", self.url, self._deadline_s)
        except StoreUnavailable as exc:
            self._unavailable(what, exc)
        return missing

    def _unavailable(self, what: str, exc: Exception) -> None:
        self._failed()
        reason = str(exc) or f"no answer within {self._deadline_s:.0f} s"
        if not self.down:
            log.warning("store failed while %s (%s); compiling locally, retrying the store "
                        "in %.0f s", what, reason, self._retry_after_s)
        self._down_until = time.monotonic() + self._retry_after_s

    def _failed(self) -> None:
        with self._lock:
            self.failures += 1
