"""A fault-injecting fsspec filesystem (protocol ``faulty://``) over the in-memory one.

It fails the next `fail_times` operations (or every one, with `always`) with a chosen
error, so retry and outage handling run through real fsspec calls, not mocks.
"""

from __future__ import annotations

import errno
from typing import Any

import fsspec
from fsspec.implementations.memory import MemoryFileSystem

ERRORS = {
    "reset": lambda: ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
    "slowdown": lambda: OSError(errno.EBUSY, "SlowDown: Please reduce your request rate"),
    "timeout": lambda: TimeoutError("read timed out"),
    "denied": lambda: PermissionError(errno.EACCES, "Access Denied"),
}


class FaultyFileSystem(MemoryFileSystem):
    protocol = ("faulty",)
    cachable = False

    def __init__(self, fail_times: int = 0, always: bool = False, error: str = "reset",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail_times = fail_times
        self.always = always
        self.error = error
        self.calls = 0
        self.failures = 0

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        if path.startswith("faulty://"):
            path = "memory://" + path[len("faulty://"):]
        return super()._strip_protocol(path)

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.always or self.failures < self.fail_times:
            self.failures += 1
            raise ERRORS[self.error]()

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> Any:
        self._maybe_fail()
        return super().ls(path, detail=detail, **kwargs)

    def cat_file(self, path: str, start: Any = None, end: Any = None, **kwargs: Any) -> bytes:
        self._maybe_fail()
        return super().cat_file(path, start=start, end=end, **kwargs)

    def pipe_file(self, path: str, value: bytes, *args: Any, **kwargs: Any) -> None:
        self._maybe_fail()
        return super().pipe_file(path, value, *args, **kwargs)


def register() -> None:
    fsspec.register_implementation("faulty", FaultyFileSystem, clobber=True)
