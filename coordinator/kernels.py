"""Compiled kernels that PyTorch's FX entries leave out, carried with the graph that uses them.

Inductor's C++ code cache skips the build when `<cache_dir>/<xx>/<hash>.so` exists, and
the hash covers the source and the compile command (which names the Python environment's
include dirs), not the machine: a library built on one node is found by path on another
whose environment sits at the same path. Triton's cache works the same way, and PyTorch's
FX entries leave some Triton kernels out (user Triton kernels, some reductions), so the
files new in Triton's cache travel too. Within one process FX graphs compile one after
another, so the files that appeared since the previous publish belong to this graph
(on a node shared by several ranks a few foreign ones may ride along: harmless bytes;
a kernel first compiled when the graph first runs rides with the next graph, and with
the snapshot).

Snapshots also carry the precompiled header Inductor builds before *every* C++ load,
even when the library exists: on a fresh node that build alone costs seconds. It lives
under `precompiled_headers/` of the default cache dir and is named `pch/<file>` here.
And they carry Triton's cache (`triton/<path>`): PyTorch leaves some kernels out of its
FX entries (user Triton kernels, some reductions), which a fresh node would rebuild.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable

from coordinator import bundle, compat
from storage.atomic import atomic_writer, write_file

log = logging.getLogger(__name__)

PCH_PREFIX = "pch/"
TRITON_PREFIX = "triton/"


class KernelFiles:
    """Finds new kernel libraries to publish and places received ones where Inductor looks.

    A snapshot carries every kernel library here, but not every precompiled header or
    Triton file: their default dirs are per user (`/tmp/torchinductor_<user>`), shared by
    every project and Python environment on the machine, with a header of ~150 MB per
    environment and Triton kernels of every project. Of Triton's files it carries those the
    job built or received from the store; of the headers, those it built or its Inductor
    used (`note_header_used`: a node warm from earlier runs has them already), and the
    received ones only where it used none (a header of another environment would cost
    every fresh node its 150 MB).
    """

    def __init__(self, root: str | None = None, header_dir: str | None = None,
                 triton_dir: str | None = None) -> None:
        self._root = root or compat.inductor_cache_dir()
        self._header_dir = header_dir or compat.precompiled_header_dir()
        self._triton_dir = triton_dir or compat.triton_cache_root()
        self._lock = threading.Lock()
        self._before = set(self._scan_all())  # this job's start
        self._known = {n for n in self._before if not n.startswith(PCH_PREFIX)}
        self._received: set[str] = set()
        self._used: set[str] = set()
        self._built: set[str] = set()

    def dirs(self) -> tuple[str, str, str]:
        """Where received files go: Inductor's cache, its headers, Triton's cache."""
        return self._root, self._header_dir, self._triton_dir

    def take_new(self) -> dict[str, bytes]:
        """Libraries and Triton kernels built since the last call, as {name: bytes}."""
        with self._lock:
            current = set(self._scan_carried())
            new, self._known = current - self._known, self._known | current
        return self._read(new)

    def snapshot_files(self) -> dict[str, bytes]:
        """What a snapshot carries (see the class)."""
        with self._lock:
            received, used = set(self._received), set(self._used)

        def ours(name: str) -> bool:
            built = name not in self._before and name not in received
            if name.startswith(PCH_PREFIX):  # one per environment, ~150 MB: those used here
                return built or name in used or (not used and name in received)
            return built or name in received

        shared = [*self._scan_headers(), *self._scan_triton()]
        return self._read([*self._scan_libraries(), *filter(ours, shared)])

    def built_count(self) -> int:
        """Files here that this job built: new since it started, not received. A job that
        compiled no graph may still have built kernels its snapshot lacked (a node whose
        Python lives at another path builds its own header and libraries).

        Counted for good once seen: a file another rank of the node built counts until
        this rank loads the entry that carries it, and a count that fell then could hide,
        at exit, what a snapshot published in between lacks."""
        # Scanned outside the lock, which placing takes per file: a placed file is noted
        # as received before it is written, so a scan that sees it finds it received.
        now = set(self._scan_all()) - self._before
        with self._lock:
            self._built |= now - self._received
            return len(self._built)

    def note_header_used(self, header: str) -> None:
        """Inductor used this precompiled header (`<name>.h`, built as `<name>.h.gch`)."""
        directory, base = os.path.split(os.path.abspath(header))
        if directory == os.path.abspath(self._header_dir):
            with self._lock:
                self._used.update(PCH_PREFIX + base + ext for ext in ("", ".gch", ".pch"))

    def note_received(self, names: Iterable[str]) -> None:
        """Files of a snapshot or entry placed on this node (here or by another rank)."""
        with self._lock:
            self._received.update(names)

    def place(self, files: dict[str, bytes]) -> int:
        """Write received files that are not here yet (atomically); returns how many."""
        return self.place_from((name, bundle.Body.of(data)) for name, data in files.items())

    def place_from(self, files: Iterable[tuple[str, bundle.Body]]) -> int:
        """`place` for files read from a stream (a snapshot's), each copied a chunk at a time."""
        placed, names = 0, []
        for name, body in files:
            names.append(name)
            self.note_received([name])  # before it appears: never counted as built here
            path = self._path(name)
            if path is None or os.path.exists(path):
                continue
            if name.startswith(TRITON_PREFIX) and os.path.basename(path).startswith("__grp__"):
                write_file(path, _rebase_group(body.read(), os.path.dirname(path)))
            else:
                with atomic_writer(path) as f:
                    body.copy_to(f)
            placed += 1
        with self._lock:
            self._known |= {n for n in names if not n.startswith(PCH_PREFIX)}
        return placed

    def _path(self, name: str) -> str | None:
        """Where a received file goes; None for any name that could escape our dirs."""
        parts = name.split("/")
        if not all(p and p not in (".", "..") and "\\" not in p for p in parts):
            return None
        if name.startswith(TRITON_PREFIX) and 2 <= len(parts) <= 4:
            return os.path.join(self._triton_dir, *parts[1:])
        if len(parts) != 2:
            return None
        if name.startswith(PCH_PREFIX):
            return os.path.join(self._header_dir, parts[1])
        return os.path.join(self._root, name) if len(parts[0]) == 2 else None

    def _read(self, names: Iterable[str]) -> dict[str, bytes]:
        files = {}
        for name in sorted(names):
            path = self._path(name)
            try:
                with open(path, "rb") as f:  # type: ignore[arg-type]
                    files[name] = f.read()
            except (OSError, TypeError) as exc:
                log.debug("%s vanished before publishing: %s", name, exc)
        return files

    def _scan_carried(self) -> list[str]:
        return [*self._scan_libraries(), *self._scan_triton()]

    def _scan_all(self) -> list[str]:
        return [*self._scan_carried(), *self._scan_headers()]

    def _scan_libraries(self) -> list[str]:
        suffixes = compat.cpp_kernel_suffixes()
        out = []
        for sub in _listdir(self._root):
            if len(sub) == 2:
                out.extend(f"{sub}/{n}" for n in _listdir(os.path.join(self._root, sub))
                           if n.endswith(suffixes))
        return out

    def _scan_headers(self) -> list[str]:
        return [PCH_PREFIX + n for n in _listdir(self._header_dir)
                if n.endswith((".h", ".gch"))]

    def _scan_triton(self) -> list[str]:
        out = []
        for top, _dirs, names in os.walk(self._triton_dir):
            rel = os.path.relpath(top, self._triton_dir)
            prefix = TRITON_PREFIX if rel == "." else f"{TRITON_PREFIX}{rel}/"
            if not rel.startswith("tmp"):  # Triton writes into tmp.* dirs, then renames
                out.extend(prefix + n for n in names if not n.endswith(".tmp"))
        return out


def _rebase_group(data: bytes, directory: str) -> bytes:
    """Triton's group files name their members by absolute path: point them at `directory`,
    where the members are placed (another node's Triton cache may live elsewhere)."""
    try:
        group = json.loads(data)
        children = group["child_paths"]
        group["child_paths"] = {c: os.path.join(directory, os.path.basename(p))
                                for c, p in children.items()}
        return json.dumps(group).encode()
    except (ValueError, KeyError, TypeError, AttributeError):
        return data


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []
