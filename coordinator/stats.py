"""Per-rank counters: one summary line at exit, the same as JSON with --stats-file."""

from __future__ import annotations

import dataclasses
import json
import logging
import os

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RankStats:
    rank: int = 0
    claimed: int = 0  # misses this rank compiled while others could wait
    loaded: int = 0  # entries handed to PyTorch by a remote lookup
    loaded_after_wait: int = 0
    materialized: int = 0  # variants written into PyTorch's local cache dirs
    published: int = 0
    store_errors: int = 0

    def snapshot(self, *, flight: object | None = None, store: object | None = None) -> dict:
        """These counters plus PyTorch's own and the store's, as one flat dict."""
        from torch._dynamo.utils import counters

        out = dataclasses.asdict(self)
        inductor, aot = counters["inductor"], counters["aot_autograd"]
        out["fxgraph_cache_miss"] = inductor["fxgraph_cache_miss"]
        out["fxgraph_cache_hit"] = inductor["fxgraph_cache_hit"]
        out["fxgraph_cache_bypass"] = inductor["fxgraph_cache_bypass"]
        out["autograd_cache_miss"] = aot["autograd_cache_miss"]
        out["autograd_cache_hit"] = aot["autograd_cache_hit"]
        out["autograd_cache_bypass"] = aot["autograd_cache_bypass"]
        out["waits"] = getattr(flight, "waits", 0)
        out["waited_s"] = round(getattr(flight, "waited_s", 0.0), 3)
        store_stats = getattr(store, "stats", None)
        if store_stats is not None:
            out["store"] = store_stats.as_dict()
        return out

    @staticmethod
    def summary_line(snap: dict) -> str:
        store = snap.get("store", {})
        return (
            f"graphs compiled {snap['fxgraph_cache_miss']}, loaded {snap['fxgraph_cache_hit']}; "
            f"waited {snap['waits']}x {snap['waited_s']:.1f} s; published {snap['published']}; "
            f"fetched {store.get('bytes_read', 0)} bytes; store errors {snap['store_errors']}"
        )

    @staticmethod
    def write(path: str, snap: dict) -> str:
        """Write `<path>.rank<R>.json` (one file per rank: ranks never share a file)."""
        target = f"{path}.rank{snap['rank']}.json"
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        tmp = f"{target}.tmp"
        with open(tmp, "w") as f:
            json.dump(snap, f, indent=1, sort_keys=True)
        os.replace(tmp, target)
        return target
