"""Bounded, jittered retries of transient store errors.

s3fs already retries throttling and dropped connections a few times inside each call; this
layer exists to bound the *total* time an operation may take and to turn a store that stays
down into one `StoreUnavailable` that callers answer with a local compile. Only transport
and backend errors are wrapped: anything else (a TypeError from a bug) passes through.
"""

from __future__ import annotations

import errno
import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from storage.errors import StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

_TRANSIENT_ERRNOS = {
    errno.EBUSY,  # s3fs: SlowDown, 503, ServiceUnavailable
    getattr(errno, "EREMOTEIO", errno.EIO),  # s3fs: InternalError (500)
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EPIPE,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.EAGAIN,
}
# Network exceptions of botocore/aiohttp that are not OSErrors; matched by name so the core
# does not import optional backends.
_TRANSIENT_NAMES = {
    "EndpointConnectionError",
    "ConnectionClosedError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ResponseStreamingError",
    "ClientConnectorError",
    "ClientOSError",
    "ServerDisconnectedError",
    "ClientPayloadError",
    "FSTimeoutError",
    "IncompleteRead",
}
_TRANSIENT_TEXT = ("SlowDown", "reduce your request rate", "ServiceUnavailable", "503")
# Packages whose exceptions are the store's (transport, backend), not our own bugs.
_BACKEND_MODULES = ("botocore", "aiobotocore", "aiohttp", "s3fs", "fsspec", "gcsfs", "adlfs",
                    "google", "azure", "requests", "urllib3", "http", "ssl", "asyncio")


def is_store_error(exc: BaseException) -> bool:
    """An OSError or an exception of a storage backend: the store failed, not our code."""
    if isinstance(exc, OSError) or is_transient(exc):
        return True
    return any(cls.__module__.split(".")[0] in _BACKEND_MODULES for cls in type(exc).__mro__
               if cls.__module__ != "builtins")


def is_transient(exc: BaseException) -> bool:
    """Whether retrying `exc` later has a fair chance of succeeding."""
    if isinstance(exc, FileNotFoundError):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if any(cls.__name__ in _TRANSIENT_NAMES for cls in type(exc).__mro__):
        return True
    if isinstance(exc, OSError):
        if exc.errno in _TRANSIENT_ERRNOS:
            return True
        return exc.errno is None and any(t in str(exc) for t in _TRANSIENT_TEXT)
    return False


class Retrier:
    """Runs store operations with at most `attempts` tries within `timeout_s` seconds."""

    def __init__(self, url: str, attempts: int = 5, timeout_s: float = 30.0,
                 base_delay_s: float = 0.1, max_delay_s: float = 5.0) -> None:
        self.url = url
        self.attempts = max(1, attempts)
        self.timeout_s = timeout_s
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Return fn(); FileNotFoundError passes through (a miss, not an error).

        Transient errors are retried with full-jitter exponential backoff; other store
        errors, or running out of attempts or time, raise StoreUnavailable naming the URL and
        the error; any other exception is a bug and passes through unchanged.
        """
        deadline = time.monotonic() + self.timeout_s
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except FileNotFoundError:
                raise
            except Exception as e:
                if not is_store_error(e):
                    raise
                if not is_transient(e):
                    raise StoreUnavailable(
                        f"store {self.url}: {what} failed: {type(e).__name__}: {e}"
                    ) from e
                delay = random.uniform(0, min(self.max_delay_s, self.base_delay_s * 2**attempt))
                remaining = deadline - time.monotonic()
                if attempt == self.attempts or remaining <= delay:
                    raise StoreUnavailable(
                        f"store {self.url} unavailable: {what} failed {attempt} time(s) "
                        f"within {self.timeout_s:g}s; last error: {type(e).__name__}: {e}"
                    ) from e
                log.debug("%s on %s failed (%s); retry %d in %.2fs", what, self.url, e,
                          attempt, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")
