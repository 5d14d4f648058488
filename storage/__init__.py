"""An artifact store over any fsspec URL: verified, content-addressed, safe for many writers.

Imports no torch: the CLI and tools use it on machines without PyTorch.
"""

from storage.errors import (
    IntegrityError,
    StoreConfigError,
    StoreError,
    StoreReadOnly,
    StoreUnavailable,
)
from storage.maintenance import Entry
from storage.store import ArtifactStore, PreparedStore, StoreStats, open_store, prepare_store

__all__ = [
    "ArtifactStore",
    "Entry",
    "IntegrityError",
    "PreparedStore",
    "StoreConfigError",
    "StoreError",
    "StoreReadOnly",
    "StoreStats",
    "StoreUnavailable",
    "open_store",
    "prepare_store",
]
