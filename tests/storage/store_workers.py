"""Functions run in child processes (spawned, so they must live in an importable module)."""

from __future__ import annotations

from typing import Any

from storage import open_store


def put_variant(url: str, fingerprint: str, data: bytes, barrier: Any, out: Any) -> None:
    """Publish `data` under one shared key as soon as every process is ready."""
    store = open_store(url, fingerprint=fingerprint)
    barrier.wait(timeout=60)
    for _ in range(3):
        store.put("fx", "shared-key", data)
    out.put(store.get_variants("fx", "shared-key"))


def read_through_node_cache(url: str, fingerprint: str, cache_dir: str, barrier: Any,
                            out: Any) -> None:
    """Read one key through a node cache shared with sibling processes; report stats."""
    store = open_store(url, fingerprint=fingerprint, node_cache_dir=cache_dir)
    barrier.wait(timeout=60)
    variants = store.get_variants("fx", "big")
    out.put((variants, store.stats.as_dict()))
