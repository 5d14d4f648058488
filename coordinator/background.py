"""Work that no rank waits for, kept off the compile thread: one daemon thread, in order.

Store requests cost milliseconds on a local disk and tens of them on an object store; a
compile thread making them one by one for entries nobody waits on (autotune results,
AOTAutograd entries, key components, miss reasons) pays that on every rank's critical path.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Background:
    """Runs submitted work in submission order on one daemon thread; `drain` waits for it."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: queue.SimpleQueue[tuple[str, Callable[..., None], tuple]] = (
            queue.SimpleQueue())
        self._pending = 0
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, what: str, work: Callable[..., None], *args: object) -> None:
        """`work(*args)` later, on this runner's thread; a failure is logged as `what`."""
        with self._idle:
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        self._queue.put((what, work, args))

    def drain(self, timeout_s: float) -> int:
        """Wait up to `timeout_s` for everything submitted; returns how much is left."""
        with self._idle:
            self._idle.wait_for(lambda: self._pending == 0, timeout_s)
            return self._pending

    def _run(self) -> None:
        while True:
            what, work, args = self._queue.get()
            try:
                work(*args)
            except Exception:
                log.exception("%s failed", what)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()
