"""pt2-cache-coordinator: one rank compiles each torch.compile graph, the rest load it."""

from __future__ import annotations

from coordinator.api import install, uninstall
from coordinator.config import Config

__all__ = ["install", "uninstall", "Config"]
