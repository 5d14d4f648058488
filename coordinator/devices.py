"""One visible GPU per worker, so that every rank's cache keys say cuda:0.

Inductor's keys contain the device index: what cuda:0 compiled misses on cuda:1. Like
`torchrun --virtual-local-rank`, each worker sees only its own GPU and LOCAL_RANK=0.
This runs before torch is imported, since CUDA reads CUDA_VISIBLE_DEVICES once.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def visible_gpus(env: dict[str, str]) -> list[str]:
    """The GPUs this process may use, without initialising CUDA."""
    if "CUDA_VISIBLE_DEVICES" in env:
        return [d for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    try:
        count = len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return []
    return [str(i) for i in range(count)]


def normalize(env: dict[str, str]) -> dict[str, str]:
    """The environment changes that give this worker exactly one GPU (none when not apt)."""
    gpus = visible_gpus(env)
    local_rank = int(env.get("LOCAL_RANK", "0"))
    local_world = int(env.get("LOCAL_WORLD_SIZE", "1"))
    if local_world <= 1 or len(gpus) < local_world:
        # One process per node keeps all its GPUs (it may need several): keys stay per index.
        return {}
    return {
        "CUDA_VISIBLE_DEVICES": gpus[local_rank],
        "LOCAL_RANK": "0",
    }
