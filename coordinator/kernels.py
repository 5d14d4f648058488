"""The CPU backend's compiled C++ kernel libraries, carried with the FX graph that uses them.

Inductor's C++ code cache skips the build when `<cache_dir>/<xx>/<hash>.so` exists, and
the hash covers the source and the compile command, not the machine: a library built on
one node is found by path on another. Within one process FX graphs compile one after
another, so the libraries that appeared since the previous publish belong to this graph
(on a node shared by several ranks a few foreign ones may ride along: harmless bytes).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable

from coordinator import compat

log = logging.getLogger(__name__)


class KernelFiles:
    """Finds new kernel libraries to publish and places received ones where Inductor looks."""

    def __init__(self, root: str | None = None) -> None:
        self._root = root or compat.inductor_cache_dir()
        self._lock = threading.Lock()
        self._known = set(self._scan())

    def take_new(self) -> dict[str, bytes]:
        """Libraries built since the last call, as {path relative to the cache dir: bytes}."""
        with self._lock:
            current = set(self._scan())
            new, self._known = current - self._known, self._known | current
        return self._read(new)

    def _read(self, rels: Iterable[str]) -> dict[str, bytes]:
        files = {}
        for rel in sorted(rels):
            try:
                with open(os.path.join(self._root, rel), "rb") as f:
                    files[rel] = f.read()
            except OSError as exc:
                log.debug("kernel library %s vanished before publishing: %s", rel, exc)
        return files

    def all_files(self) -> dict[str, bytes]:
        """Every library in the cache dir, the ISA probes included (for snapshots)."""
        return self._read(self._scan())

    def place(self, files: dict[str, bytes]) -> int:
        """Write received libraries that are not here yet (atomically); returns how many."""
        placed = 0
        for rel, data in files.items():
            path = os.path.join(self._root, rel)
            if not _safe_relpath(rel) or os.path.exists(path):
                continue
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.pt2cc-{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
            placed += 1
        with self._lock:
            self._known |= set(files)
        return placed

    def _scan(self) -> list[str]:
        suffixes = compat.cpp_kernel_suffixes()
        out = []
        try:
            subdirs = [d for d in os.listdir(self._root) if len(d) == 2]
        except OSError:
            return out
        for sub in subdirs:
            try:
                names = os.listdir(os.path.join(self._root, sub))
            except OSError:
                continue
            out.extend(f"{sub}/{n}" for n in names if n.endswith(suffixes))
        return out


def _safe_relpath(rel: str) -> bool:
    """Only `xx/name.so` shapes: a stored object must never write outside the cache dir."""
    parts = rel.split("/")
    return len(parts) == 2 and len(parts[0]) == 2 and all(
        p and p not in (".", "..") and "\\" not in p for p in parts
    )
