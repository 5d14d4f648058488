"""A timeline of the coordinator's work, as Chrome trace-event JSON (opens in Perfetto).

Each rank writes `rank<R>.trace.json` into the trace directory at exit: one complete event
("ph": "X") per claim, wait, load, compile, publish and snapshot step, with its key and
Dynamo's compile id. Timestamps are wall-clock microseconds, so ranks line up; rank 0
merges every rank's file it finds into `job.trace.json` once the others have reported.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)

JOB_TRACE = "job.trace.json"


class Trace:
    """The events of one rank (pid = rank, tid = thread), kept in memory until exit."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self._events: list[dict] = []
        self._threads: dict[int, str] = {}  # native id -> name, for the viewer
        self._lock = threading.Lock()

    def span(self, name: str, start_s: float, end_s: float, **args: object) -> None:
        """One complete event from `start_s` to `end_s` (time.time() seconds)."""
        thread = threading.current_thread()
        event = {"name": name, "cat": "pt2cc", "ph": "X", "pid": self.rank,
                 "tid": thread.native_id or 0, "ts": round(start_s * 1e6, 1),
                 "dur": round(max(end_s - start_s, 0.0) * 1e6, 1),
                 "args": {k: v for k, v in args.items() if v is not None}}
        with self._lock:
            self._events.append(event)
            self._threads[event["tid"]] = thread.name

    def events(self) -> list[dict]:
        meta = [{"name": "process_name", "ph": "M", "pid": self.rank,
                 "args": {"name": f"rank {self.rank}"}}]
        with self._lock:
            meta += [{"name": "thread_name", "ph": "M", "pid": self.rank, "tid": tid,
                      "args": {"name": name}} for tid, name in self._threads.items()]
            return [*meta, *self._events]

    def write(self, directory: str) -> str:
        """`<directory>/rank<R>.trace.json`; raises OSError for an unwritable directory."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"rank{self.rank}.trace.json")
        _write_json(path, {"traceEvents": self.events(), "displayTimeUnit": "ms"})
        return path


def merge(directory: str) -> str | None:
    """Every `rank*.trace.json` under `directory` as one `job.trace.json`; None if none."""
    events: list[dict] = []
    for path in sorted(Path(directory).glob("rank*.trace.json")):
        try:
            events += json.loads(path.read_text())["traceEvents"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("skipping trace %s: %s", path, exc)
    if not events:
        return None
    target = os.path.join(directory, JOB_TRACE)
    _write_json(target, {"traceEvents": events, "displayTimeUnit": "ms"})
    return target


def _write_json(path: str, doc: object) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)
