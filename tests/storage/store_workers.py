"""Functions run in child processes (spawned, so they must live in an importable module)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from typing import Any

from storage import open_store


def run_together(target: Callable[..., None], args_list: Sequence[tuple],
                 timeout_s: float = 60) -> list[Any]:
    """One spawned process per args tuple, released at once by a shared barrier.

    Each process gets `(*args, barrier, out)` and puts one result on `out`; returns the
    results in arrival order once every process has exited with status 0.
    """
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(len(args_list)), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, barrier, out)) for args in args_list]
    for p in procs:
        p.start()
    results = [out.get(timeout=timeout_s) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return results


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
