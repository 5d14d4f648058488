"""pt2-cache-coordinator: one rank compiles each torch.compile graph, the rest load it.

`install()` is imported lazily so that `pt2cc` (the store CLI) never imports torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["install", "uninstall", "Config"]


def __getattr__(name: str) -> Any:
    if name in ("install", "uninstall"):
        from coordinator import api

        return getattr(api, name)
    if name == "Config":
        from coordinator.config import Config

        return Config
    raise AttributeError(f"module 'coordinator' has no attribute {name!r}")
