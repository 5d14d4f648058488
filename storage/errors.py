"""The storage package's exceptions: one small hierarchy so callers catch one base class."""

from __future__ import annotations


class StoreError(Exception):
    """Base of every error the store raises; callers that fail open catch this."""


class StoreConfigError(StoreError):
    """Bad input to `open_store` (URL, credentials, signing key): fix the config, not the store."""


class StoreUnavailable(StoreError):
    """The store could not be reached or refused an operation after bounded retries."""


class StoreReadOnly(StoreUnavailable):
    """The store refused a write (permission denied): it can still be read."""


class IntegrityError(StoreError):
    """An object failed verification (digest, format or signature); it is never handed out."""
