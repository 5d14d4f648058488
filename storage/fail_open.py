"""A store that never fails its caller: an outage becomes a miss, and one warning.

Every call runs on a thread of this wrapper's own, within a deadline: a store error's
traceback (fsspec keeps exceptions in reference cycles) can then only pin this thread's
frames, never the caller's. (PyTorch resets DDPOptimizer's `fakify_first_call` in a
`__del__` of a compile-thread frame: a late reset broke the next bucket's compile.)
After a failure the store is left alone for `retry_after_s`: lookups miss, publishes are
skipped. A refused write makes the store read-only: reads go on, writes stop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as DeadlineExceeded
from typing import TypeVar

from storage.api import Store
from storage.errors import StoreReadOnly, StoreUnavailable
from storage.store import StoreStats

log = logging.getLogger(__name__)
T = TypeVar("T")


class FailOpenStore:
    """Wraps a Store; implements the same interface and never raises a store error."""

    def __init__(self, store: Store, *, deadline_s: float, retry_after_s: float = 60.0) -> None:
        self._store = store
        self._deadline_s = deadline_s
        self._retry_after_s = retry_after_s
        self._io = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pt2cc-store")
        self._down_until = 0.0
        self._refused = False
        self._lock = threading.Lock()
        self.url = store.url
        self.failures = 0

    @property
    def stats(self) -> StoreStats:
        return self._store.stats

    @property
    def read_only(self) -> bool:
        return self._refused or self._store.read_only

    @property
    def down(self) -> bool:
        return time.monotonic() < self._down_until

    def list_index(self) -> dict[tuple[str, str], list[str]]:
        return self._call("listing the index", {}, self._store.list_index)

    def list_variants(self, kind: str, key: str) -> list[str]:
        return self._call(f"looking up {kind} {key}", [], self._store.list_variants, kind, key)

    def get_object(self, digest: str) -> bytes | None:
        return self._call(f"fetching object {digest[:12]}", None, self._store.get_object, digest)

    def get_snapshot(self, tag: str) -> bytes | None:
        return self._call(f"fetching snapshot {tag!r}", None, self._store.get_snapshot, tag)

    def put(self, kind: str, key: str, data: bytes) -> str | None:
        return self._write(f"publishing {kind} {key}", self._store.put, kind, key, data)

    def put_snapshot(self, tag: str, data: bytes) -> str | None:
        return self._write(f"publishing snapshot {tag!r}", self._store.put_snapshot, tag, data)

    def get_components(self, kind: str, key: str) -> dict[str, list[str]] | None:
        return self._call(f"reading components of {kind} {key}", None,
                          self._store.get_components, kind, key)

    def environments(self) -> dict[str, dict[str, str]]:
        return self._call("listing environments", {}, self._store.environments)

    def put_components(self, kind: str, key: str, components: dict[str, list[str]]) -> None:
        self._write(f"publishing components of {kind} {key}", self._store.put_components,
                    kind, key, components)

    def describe_environment(self, fields: dict[str, str]) -> None:
        self._write("describing the environment", self._store.describe_environment, fields)

    def record_use(self, job: str, digests: list[str]) -> None:
        self._write(f"recording what job {job} used", self._store.record_use, job, digests)

    def _write(self, what: str, fn: Callable[..., T], *args: object) -> T | None:
        return None if self.read_only else self._call(what, None, fn, *args)

    def _call(self, what: str, missing: T, fn: Callable[..., T], *args: object) -> T:
        if self.down:
            return missing
        try:
            try:
                future = self._io.submit(fn, *args)
            except RuntimeError:  # the interpreter is exiting (atexit): no new threads
                return fn(*args)
            return future.result(timeout=self._deadline_s)
        except StoreReadOnly as exc:
            self._failed()
            with self._lock:
                first, self._refused = not self._refused, True
            if first:
                log.warning("store refused %s (%s); publishing nothing more, still loading "
                            "from it", what, exc)
        except (StoreUnavailable, DeadlineExceeded) as exc:
            self._failed()
            reason = exc or f"no answer within {self._deadline_s:.0f} s"
            if not self.down:
                log.warning("store failed while %s (%s); compiling locally, retrying the "
                            "store in %.0f s", what, reason, self._retry_after_s)
            self._down_until = time.monotonic() + self._retry_after_s
        return missing

    def _failed(self) -> None:
        with self._lock:
            self.failures += 1
