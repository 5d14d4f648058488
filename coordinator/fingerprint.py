"""The namespace artifacts live in: they never cross torch, triton, CUDA, GPU or Python builds."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import sys

from coordinator import compat


def describe() -> dict[str, str]:
    """What an artifact depends on beyond its own cache key, as readable fields."""
    import torch

    fields = {
        "torch": torch.__version__,
        "torch_git": str(getattr(torch.version, "git_version", "")),
        "python": ".".join(map(str, sys.version_info[:2])),
        "machine": platform.machine(),
        "cuda": str(torch.version.cuda),
        "triton": _dist_version("triton") or _dist_version("pytorch-triton") or "none",
    }
    if torch.cuda.is_available():
        # This process's own GPU: its device is not set yet when the launcher asks.
        local = int(os.environ.get("LOCAL_RANK", "0"))
        index = local if local < torch.cuda.device_count() else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        fields["gpu"] = props.name
        fields["capability"] = f"{props.major}.{props.minor}"
    else:
        fields["gpu"] = "none"
        fields["cpu"] = compat.cpu_capability()
    return fields


def fingerprint(fields: dict[str, str] | None = None) -> str:
    """A short, path-safe digest of `describe()`."""
    fields = describe() if fields is None else fields
    blob = json.dumps(fields, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
