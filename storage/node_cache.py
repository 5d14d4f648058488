"""A node-local read-through tier: each object is downloaded once per machine, not once per rank.

Objects are cached by digest as the framed bytes the store holds, so they are verified on
every read exactly like remote ones. A per-digest `flock` makes the other processes on the
node wait for the first one's download instead of starting their own, within a deadline.
Size is bounded with LRU eviction: a hit touches the file's mtime, eviction removes the
oldest first.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from storage.atomic import write_file

log = logging.getLogger(__name__)

LOCK_POLL_MIN_S = 0.002
LOCK_POLL_MAX_S = 0.025


class NodeCache:
    """Objects cached by digest under `directory`, at most about `max_bytes` in total."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int = 10 * 2**30,
                 lock_wait_s: float = 120.0) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.lock_wait_s = lock_wait_s
        self._locks = self.dir / ".locks"
        self._notes = self.dir / ".notes"  # outside eviction, like the locks
        self.bytecode_dir = self.dir / ".bytecode"  # the backend's (storage/bytecode.py)
        self._locks.mkdir(parents=True, exist_ok=True)

    def _path(self, digest: str) -> Path:
        return self.dir / digest[:2] / digest

    def get(self, digest: str) -> bytes | None:
        """The cached bytes of `digest`, or None; a hit makes it the most recently used."""
        path = self._path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        with contextlib.suppress(OSError):
            os.utime(path)
        return data

    def put(self, digest: str, data: bytes) -> bool:
        """Store bytes atomically (temp file + os.replace), then evict down to the size
        bound; whether the copy is still there (one larger than the bound is not)."""
        write_file(self._path(digest), data)
        self.evict()
        return self._path(digest).exists()

    def discard(self, digest: str) -> None:
        """Drop a cached copy (e.g. one that failed verification) so it is fetched again."""
        with contextlib.suppress(FileNotFoundError):
            self._path(digest).unlink()

    @contextlib.contextmanager
    def lock(self, digest: str, what: str = "") -> Iterator[None]:
        """Hold the node-wide lock for `digest` (or a note's name) while one process
        downloads it (or does the work the note records).

        A holder that is alive but stuck must not stop the node: after `lock_wait_s` the
        caller goes on without the lock (one warning naming `what`) and does the work
        itself, which the atomic writes make safe. A holder that dies lets go at once."""
        try:
            f = open(self._locks / digest, "a")  # noqa: SIM115 - closed by the `with` below
        except OSError as e:  # a read-only or full node disk: download without the lock
            log.debug("node cache lock for %s unavailable (%s)", digest, e)
            yield
            return
        with f:
            if not self._acquire(f, what or digest[:12]):
                yield
                return
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _acquire(self, f: IO[str], what: str) -> bool:
        """Polled, since a blocking `flock` cannot be given up on: the pause grows to
        LOCK_POLL_MAX_S, the most a waiter wakes late."""
        deadline = time.monotonic() + self.lock_wait_s
        pause = LOCK_POLL_MIN_S
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("waited %.0f s for another process of this node on %s; going "
                            "on without it", self.lock_wait_s, what)
                return False
            time.sleep(min(pause, left))
            pause = min(pause * 2, LOCK_POLL_MAX_S)

    def note(self, name: str) -> bytes | None:
        """A small note one process on this node left for the others (under `lock(name)`)."""
        try:
            return (self._notes / name).read_bytes()
        except OSError:
            return None

    def leave_note(self, name: str, data: bytes) -> None:
        """Best effort: on a node dir that cannot be written, each process works alone."""
        try:
            write_file(self._notes / name, data)
        except OSError as e:
            log.debug("cannot leave note %s on the node (%s)", name, e)

    def forget_notes(self, prefix: str, older_than_s: float) -> None:
        """Remove notes named `prefix...`, and their locks, older than `older_than_s`
        (notes of past jobs, which nobody reads again)."""
        cutoff = time.time() - older_than_s
        for path in [*self._notes.glob(f"{prefix}*"), *self._locks.glob(f"{prefix}*")]:
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()

    def _files(self) -> list[tuple[float, int, Path]]:
        found = []
        for sub in self.dir.iterdir():
            if sub.name.startswith(".") or not sub.is_dir():
                continue
            for entry in os.scandir(sub):
                if entry.name.startswith("."):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat()
                    found.append((st.st_mtime, st.st_size, Path(entry.path)))
        return found

    def evict(self) -> None:
        """Remove least recently used objects until the total is within `max_bytes`.

        Readers that already opened a file keep reading it after unlink, so eviction needs
        no coordination with them.
        """
        files = self._files()
        total = sum(size for _, size, _ in files)
        if total <= self.max_bytes:
            return
        for _, size, path in sorted(files, key=lambda f: f[0]):
            if total <= self.max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                log.debug("node cache evicted %s (%d bytes)", path.name, size)
            total -= size
