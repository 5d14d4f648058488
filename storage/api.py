"""What callers may do with a store: the one interface the coordinator and the CLI use."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from storage.store import StoreStats


class Store(Protocol):
    """An artifact store: objects named by digest, an index of variants per key, snapshots,
    and small plain-JSON notes (key components, the environment, what each job used).

    Lookups name variants by digest, newest first; `get_object` returns a verified payload
    or None. `read_only` turns true once the store has refused a write; `opened` is false
    while a store is still being opened in the background, or could not be.
    """

    url: str
    stats: StoreStats

    @property
    def opened(self) -> bool: ...

    @property
    def read_only(self) -> bool: ...

    def list_index(self) -> dict[tuple[str, str], list[str]]: ...

    def list_variants(self, kind: str, key: str) -> list[str]: ...

    def get_object(self, digest: str) -> bytes | None: ...

    def put(self, kind: str, key: str, data: bytes,
            on_node: Callable[[str], None] | None = None) -> str | None: ...

    def get_snapshot(self, tag: str) -> bytes | None: ...

    def put_snapshot(self, tag: str, data: bytes) -> str | None: ...

    def get_components(self, kind: str, key: str) -> dict[str, list[str]] | None: ...

    def put_components(self, kind: str, key: str, components: dict[str, list[str]]) -> None: ...

    def environments(self) -> dict[str, dict[str, str]]: ...

    def describe_environment(self, fields: dict[str, str]) -> None: ...

    def record_use(self, job: str, digests: list[str]) -> None: ...
