"""The policy behind PyTorch's cache lookups: store first, then single-flight, then compile.

`hooks.py` forwards PyTorch's calls here and holds no policy of its own. Nothing in this
module raises into a compile: a failing store or peer turns into a local compile and one
log line.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from coordinator import compat, envelope
from coordinator.kernels import KernelFiles
from coordinator.single_flight import SingleFlight, WaitResult
from coordinator.snapshot import Snapshots
from coordinator.stats import RankStats
from storage.atomic import write_file

log = logging.getLogger(__name__)
T = TypeVar("T")

# Kinds whose miss is worth one rank compiling while the others wait: an FX graph is where
# Inductor spends the compile. AOTAutograd entries are looked up *before* AOTAutograd
# decides to bypass its cache (it does under DDP's graph splitting), so a claim there
# would be held for a whole compile and never published; ranks trace AOT themselves and
# meet at the FX graph. Autotune and PGO lookups repeat and are often never saved.
CLAIMING_KINDS = frozenset({"fxgraph"})
# Kinds whose local entries PyTorch evaluates guards on (GuardedCache subclasses).
GUARDED_KINDS = frozenset({"fxgraph", "aotautograd"})

STORE_RETRY_AFTER_S = 60.0


class Artifacts:
    """Looks up, waits for and publishes one process's compiled artifacts."""

    def __init__(self, store: object | None, flight: SingleFlight, kernels: KernelFiles,
                 stats: RankStats, snapshots: Snapshots | None = None,
                 snapshot_wait_s: float = 60.0, store_deadline_s: float = 120.0) -> None:
        self._store = store
        # Store calls run on their own thread. A store error's traceback (and fsspec keeps
        # exceptions in reference cycles) would otherwise pin the compile thread's frames
        # until the garbage collector runs, and PyTorch resets DDPOptimizer's
        # `fakify_first_call` in a `__del__` of such a frame: a late reset broke the next
        # bucket's compile ("Cannot access data pointer of Tensor") on s3://.
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pt2cc-store")
        self._store_deadline_s = store_deadline_s
        self._snapshots = snapshots
        self._snapshot_wait_s = snapshot_wait_s
        self._flight = flight
        self._kernels = kernels
        self._stats = stats
        self._offered: dict[tuple[str, str], set[str]] = {}  # digests handed to PyTorch
        # PyTorch's local dir of each guarded key offer_local has seen (and fetched once).
        self._subdirs: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self._store_down_until = 0.0
        self._writes_refused = False  # the store said no to a write: stop publishing, keep reading

    # -- called by the hooks -------------------------------------------------------------

    def offer_local(self, kind: str, key: str, subdir: str) -> None:
        """Put every stored variant of `key` where PyTorch's guard evaluation will see it."""
        if (kind, key) in self._subdirs:
            return
        self._subdirs[(kind, key)] = subdir
        self._await_snapshot()
        if os.path.isdir(subdir) and any(not n.startswith(".") for n in os.listdir(subdir)):
            # Warm locally (or from the snapshot): no store traffic. Should no local entry's
            # guards hold, PyTorch's remote lookup (`get`) still offers the store's variants.
            return
        for digest, blob in self._fetch(kind, key):
            self._materialize(kind, key, digest, blob, subdir)

    def get(self, kind: str, key: str) -> bytes | None:
        """PyTorch's remote lookup, reached when no local entry's guards held."""
        try:
            self._await_snapshot()
            if found := self._fresh_variant(kind, key):
                return found
            if kind not in CLAIMING_KINDS or not self._flight.coordinated or self._store_down():
                return None
            if self._flight.claim(kind, key):
                self._stats.claimed += 1
                return None
            result = self._flight.wait(kind, key)
            if result is WaitResult.DONE and (found := self._fresh_variant(kind, key)):
                self._stats.loaded_after_wait += 1
                return found
            return None
        except Exception:  # noqa: BLE001 - a bug here must cost a compile, not the job
            log.exception("lookup of %s %s failed; compiling locally", kind, key)
            return None

    def put(self, kind: str, key: str, value: bytes) -> None:
        """PyTorch publishing a fresh entry: store it, then let waiters in."""
        try:
            files = self._kernels.take_new() if kind == "fxgraph" else {}
            if self._store is not None and not self._store_down() and not self._writes_refused:
                if kind not in CLAIMING_KINDS and self._published_meanwhile(kind, key):
                    return
                blob = envelope.pack(value, files)
                digest = self._on_store_thread(
                    self._store.put, kind, key, blob  # type: ignore[attr-defined]
                )
                self._note_offered(kind, key, digest)
                self._stats.published += 1
        except Exception as exc:  # noqa: BLE001
            if isinstance(exc.__cause__, PermissionError):  # a read-only store, not an outage
                self._stats.store_errors += 1
                self._writes_refused = True
                log.warning("store refused publishing %s %s (%s); publishing nothing more, "
                            "still loading from it", kind, key, exc)
            else:
                self._store_failed(exc, f"publishing {kind} {key}")
        finally:
            self._flight.finish(kind, key)

    def compile_started(self) -> None:
        """Before anything of a compile runs (Inductor probes the CPU while it computes its
        first key), the snapshot's files must be in place."""
        self._await_snapshot()

    def compile_ended(self) -> None:
        """A Dynamo compile (or lazy backward compile) ended: no claim outlives it."""
        self._flight.finish_all()
        if self._snapshots is not None:
            self._snapshots.compile_ended()

    # -- internals -----------------------------------------------------------------------

    def _fresh_variant(self, kind: str, key: str) -> bytes | None:
        """The newest stored variant this process has not offered to PyTorch yet."""
        with self._lock:
            offered = set(self._offered.get((kind, key), ()))
        fresh = [(d, b) for d, b in self._fetch(kind, key) if d not in offered]
        if not fresh:
            return None
        digest, blob = fresh[0]
        subdir = self._subdirs.get((kind, key))
        if subdir is not None:
            # Older variants go to the local dir for the next lookup's guard evaluation.
            for other_digest, other in fresh[1:]:
                self._materialize(kind, key, other_digest, other, subdir)
        payload = self._open(kind, key, blob)
        if payload is None:
            return None
        self._note_offered(kind, key, digest)
        self._stats.loaded += 1
        return payload

    def _open(self, kind: str, key: str, blob: bytes) -> bytes | None:
        """PyTorch's value inside one stored variant, with its kernel files put in place."""
        try:
            payload, files = envelope.unpack(blob)
        except envelope.EnvelopeError as exc:
            log.warning("ignoring foreign object under %s %s: %s", kind, key, exc)
            return None
        self._kernels.place(files)
        return payload

    def _materialize(self, kind: str, key: str, digest: str, blob: bytes, subdir: str) -> None:
        payload = self._open(kind, key, blob)
        if payload is None:
            return
        try:
            content = base64.b64decode(json.loads(payload)["data"])
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable object under %s %s: %s", kind, key, exc)
            return
        path = os.path.join(subdir, compat.local_entry_name(content))
        if not os.path.exists(path):
            write_file(path, content)
            self._stats.materialized += 1
        self._note_offered(kind, key, digest)

    def _fetch(self, kind: str, key: str) -> list[tuple[str, bytes]]:
        if self._store is None or self._store_down():
            return []
        try:
            variants = self._on_store_thread(
                self._store.get_variants, kind, key  # type: ignore[attr-defined]
            )
        except Exception as exc:  # noqa: BLE001
            self._store_failed(exc, f"looking up {kind} {key}")
            return []
        return [(_digest(b), b) for b in variants]

    def _await_snapshot(self) -> None:
        if self._snapshots is not None and not self._snapshots.ready.is_set():
            self._snapshots.wait_ready(self._snapshot_wait_s)

    def _published_meanwhile(self, kind: str, key: str) -> bool:
        """Another rank published this key after our lookup: its entry stands for ours.

        Unclaimed kinds are built by every rank that misses at once; their pickles differ
        byte for byte, so without this each rank would add a duplicate variant. A variant
        that was there at our lookup and failed our guards was offered to us, so it does
        not count: ours is then a genuinely new variant.
        """
        with self._lock:
            offered = set(self._offered.get((kind, key), ()))
        return any(digest not in offered for digest, _ in self._fetch(kind, key))

    def _note_offered(self, kind: str, key: str, digest: str) -> None:
        with self._lock:
            self._offered.setdefault((kind, key), set()).add(digest)

    def _store_down(self) -> bool:
        return time.monotonic() < self._store_down_until

    def _on_store_thread(self, fn: Callable[..., T], *args: object) -> T:
        """Run one store call on the store thread, within the store's own deadline."""
        return self._io.submit(fn, *args).result(timeout=self._store_deadline_s)

    def _store_failed(self, exc: Exception, what: str) -> None:
        self._stats.store_errors += 1
        if not self._store_down():
            log.warning("store failed while %s (%s); compiling locally, retrying the store "
                        "in %.0f s", what, exc, STORE_RETRY_AFTER_S)
        self._store_down_until = time.monotonic() + STORE_RETRY_AFTER_S


def _digest(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()
