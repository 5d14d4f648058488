"""Functions run in spawned child processes by the concurrency tests (importable by name)."""

from __future__ import annotations

from typing import Any

from storage import open_store

KEYS = [f"pt2:fx-graph-v1::shared{i}:c1" for i in range(3)]


def publish_variants(url: str, fingerprint: str, writer: int, rounds: int, barrier: Any,
                     out: Any) -> None:
    """Publish this writer's own variant of every shared key, read back after each write."""
    store = open_store(url, fingerprint=fingerprint)
    barrier.wait(timeout=60)
    seen_bad = []
    for r in range(rounds):
        for key in KEYS:
            mine = f"writer {writer} variant of {key}".encode() * 50
            store.put("fxgraph", key, mine)
            variants = store.get_variants("fxgraph", key)
            if mine not in variants:
                seen_bad.append((r, key, "own variant missing"))
            if any(not v.startswith(b"writer ") for v in variants):
                seen_bad.append((r, key, "foreign bytes"))
    out.put((writer, seen_bad, store.stats.as_dict()))
