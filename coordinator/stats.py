"""Per-rank counters and the reasons of misses: one summary line at exit, JSON with
--stats-file, and every timed step on the rank's trace with --trace."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, TypeVar

from coordinator import compat
from coordinator.trace import Trace

if TYPE_CHECKING:
    from coordinator.single_flight import SingleFlight
    from storage.fail_open import FailOpenStore

log = logging.getLogger(__name__)
T = TypeVar("T", int, float)


MAX_MISS_DETAILS = 100
TRACE_MIN_S = 0.001  # shorter steps without a key stay off the trace (counted all the same)


@dataclasses.dataclass
class RankStats:
    rank: int = 0
    claimed: int = 0  # misses this rank compiled while others could wait
    loaded: int = 0  # entries handed to PyTorch by a remote lookup
    loaded_after_wait: int = 0
    waits_skipped: int = 0  # claims not waited on: this key's variants are specialised
    wasted_wait_s: float = 0.0  # waits after which this rank compiled all the same
    materialized: int = 0  # variants written into PyTorch's local cache dirs
    published: int = 0
    # Seconds and calls per phase of our own work (index listing, object fetch, waiting for
    # the prefetch, snapshot fetch/unpack/load, ...): where a warm start's time goes.
    phases: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    # Compiles with a store configured, counted by why they missed ("new graph", "differs
    # in: Inductor config", ...), and the first MAX_MISS_DETAILS of them in full.
    misses: dict[str, int] = dataclasses.field(default_factory=dict)
    miss_details: list[dict[str, str | None]] = dataclasses.field(default_factory=list)
    trace: Trace | None = dataclasses.field(default=None, repr=False)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)
    # PyTorch's cache counters and phase times are per process: ours count from the
    # install on.
    _counters_at_start: dict[str, int] = dataclasses.field(
        default_factory=compat.cache_counters, repr=False)
    _torch_phases_at_start: dict[str, float] = dataclasses.field(
        default_factory=compat.compile_time_metrics, repr=False)

    @contextlib.contextmanager
    def phase(self, name: str, **args: object) -> Iterator[None]:
        """Time one step of our own work; on the trace too, with `args` (key, ...)."""
        start, wall = time.perf_counter(), time.time()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.add_phase(name, elapsed)
            if self.trace is not None and (args or elapsed >= TRACE_MIN_S):
                self.trace.span(name, wall, wall + elapsed, **args)

    def add_phase(self, name: str, seconds: float) -> None:
        """Count one step timed by `phase`, or before this object existed."""
        with self._lock:
            seconds_calls = self.phases.setdefault(name, [0.0, 0])
            seconds_calls[0] += seconds
            seconds_calls[1] += 1

    def miss(self, kind: str, key: str, group: str, reason: str, compile_id: str | None) -> None:
        """Count one explained miss."""
        with self._lock:
            self.misses[group] = self.misses.get(group, 0) + 1
            if len(self.miss_details) < MAX_MISS_DETAILS:
                self.miss_details.append({"kind": kind, "key": key, "reason": reason,
                                          "compile_id": compile_id})

    def as_dict(self, *, flight: SingleFlight | None = None,
                store: FailOpenStore | None = None) -> dict:
        """These counters plus PyTorch's own and the store's, as one flat dict."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if not f.name.startswith("_") and f.name != "trace"}
        with self._lock:
            out["misses"] = dict(sorted(self.misses.items(), key=lambda kv: -kv[1]))
            out["miss_details"] = list(self.miss_details)
            out["phases"] = {name: {"s": round(sc[0], 4), "calls": int(sc[1])}
                             for name, sc in sorted(self.phases.items())}
        out.update(_since(compat.cache_counters(), self._counters_at_start))
        out["torch_phases"] = {name: round(s, 4) for name, s in _since(
            compat.compile_time_metrics(), self._torch_phases_at_start).items()}
        out["waits"] = flight.waits if flight is not None else 0
        out["waited_s"] = round(flight.waited_s, 3) if flight is not None else 0.0
        out["job_store_ops"] = flight.job_store_ops if flight is not None else 0
        out["job_store_keys"] = flight.job_store_keys if flight is not None else 0
        out["store_errors"] = store.failures if store is not None else 0
        if store is not None:
            out["store"] = store.stats.as_dict()
        out["wasted_wait_s"] = round(self.wasted_wait_s, 3)
        return out

    @staticmethod
    def summary_line(snap: dict) -> str:
        store = snap.get("store", {})
        return (
            f"graphs compiled {snap['fxgraph_cache_miss']}, loaded {snap['fxgraph_cache_hit']}; "
            f"waited {snap['waits']}x {snap['waited_s']:.1f} s; published {snap['published']}; "
            f"fetched {store.get('bytes_read', 0)} bytes; store errors {snap['store_errors']}"
            + "".join(f"; {n} missed: {reason}" for reason, n in snap["misses"].items())
        )

    @staticmethod
    def write(path: str, snap: dict) -> str:
        """Write `<path>.rank<R>.json` (one file per rank: ranks never share a file)."""
        target = f"{path}.rank{snap['rank']}.json"
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        tmp = f"{target}.tmp"
        with open(tmp, "w") as f:
            json.dump(snap, f, indent=1, sort_keys=True)
        os.replace(tmp, target)
        return target


def _since(now: dict[str, T], start: dict[str, T]) -> dict[str, T]:
    """Per-process totals of PyTorch's, less what they were at the install."""
    return {name: v - start.get(name, 0) for name, v in now.items()}
