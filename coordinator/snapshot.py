"""Bulk prefetch for a new job: one object per tag holds what a warm node's caches hold.

Per-key lookups already make a fresh node compile nothing; the snapshot makes it fast:
one GET (once per node, through the node tier) instead of a listing per graph, and it
also carries what no per-key entry does: the C++ vector-ISA probes Inductor builds on
every new machine. It holds PyTorch's own Mega-Cache (`save_cache_artifacts`) plus every
compiled library in Inductor's cache dir. Rank 0 publishes it when compiles go quiet
after warm-up, and again at exit if anything was compiled since.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
import zlib
from collections.abc import Callable
from typing import BinaryIO

from coordinator import bundle
from coordinator.kernels import KernelFiles
from coordinator.stats import RankStats
from storage import sealed
from storage.api import Store
from storage.node_cache import NodeCache

log = logging.getLogger(__name__)

MAX_SNAPSHOT_BYTES = 2 * 2**30
COMPILE_STACK_WAIT_S = 120.0  # install() imports Dynamo and Inductor in about a second


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def compress(data: bytes) -> bytes:
    """zstd level 3: the precompiled header (~150 MB) shrinks 7x in ~0.4 s and a fresh node
    unpacks it in ~0.2 s (zlib level 1: 6x, 1 s and 0.6 s, on the CPU machine)."""
    import zstandard

    return zstandard.ZstdCompressor(level=3).compress(data)


def open_decompressed(blob: bytes) -> BinaryIO:
    """A stream of the snapshot's bundle: zstd, decompressed as it is read, or zlib for
    snapshots published by earlier releases."""
    if blob.startswith(ZSTD_MAGIC):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(blob)
    return io.BytesIO(zlib.decompress(blob))


PROJECT_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg", ".git")


def derive_tag(target: str) -> str:
    """The default snapshot tag: `<project>:<script>`, distinct per project and the same for
    every job of that project, wherever it is checked out.

    The project is the nearest directory above the script holding pyproject.toml,
    setup.py, setup.cfg or .git, named by pyproject's `[project] name` when it has one,
    else by the directory's name; the script is its path below that directory without
    `.py`. A script outside any project is `<its directory's name>:<script>`. A module
    (`-m pkg.mod`) is its file's tag when found, else its dotted name.
    """
    path = target
    if not target.endswith(".py") and not os.path.exists(target):
        import importlib.util

        try:
            spec = importlib.util.find_spec(target)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.origin or not os.path.isfile(spec.origin):
            return target or "default"
        path = spec.origin
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    root = directory
    while not any(os.path.exists(os.path.join(root, m)) for m in PROJECT_MARKERS):
        parent = os.path.dirname(root)
        if parent == root:
            root = directory
            break
        root = parent
    script = os.path.relpath(path, root).removesuffix(".py")
    return f"{_project_name(root)}:{script}"


def _project_name(root: str) -> str:
    import tomllib

    try:
        with open(os.path.join(root, "pyproject.toml"), "rb") as f:
            name = tomllib.load(f).get("project", {}).get("name")
    except (OSError, ValueError):
        name = None
    return name if isinstance(name, str) and name else os.path.basename(root) or "root"


class Snapshots:
    """Prefetches this tag's snapshot in the background; publishes one after warm-up."""

    def __init__(self, store: Store, tag: str, kernels: KernelFiles, *, publisher: bool,
                 quiet_s: float, compiled_count: Callable[[], int], stats: RankStats,
                 entry_names: dict[str, str], node: NodeCache | None = None,
                 compile_stack: threading.Event | None = None,
                 name_entries: Callable[[], None] | None = None) -> None:
        self._store = store
        self._name_entries = name_entries  # fills `entry_names` in before a publish
        # Set once the installing thread has imported Dynamo and Inductor (None: already
        # imported). The Mega-Cache load imports them too, and the same modules imported
        # by two threads at once can deadlock on their import locks (circular imports).
        self._compile_stack = compile_stack
        self._node = node
        self._stats = stats
        self._entry_names = entry_names
        self._tag = tag
        self._kernels = kernels
        self._publisher = publisher
        self._quiet_s = quiet_s
        self._compiled_count = compiled_count
        self._published_at_count = 0
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self.ready = threading.Event()
        self.loaded_digest: str | None = None  # the snapshot this process loaded, if any

    def start_prefetch(self) -> None:
        threading.Thread(target=self._prefetch, name="pt2cc-prefetch", daemon=True).start()

    def wait_ready(self, timeout_s: float) -> None:
        """Called before the first lookup: never race the snapshot into the local caches."""
        if not self.ready.wait(timeout_s):
            log.warning("snapshot %r still loading after %.0f s; going on without it",
                        self._tag, timeout_s)
            self.ready.set()

    def compile_started(self) -> None:
        """A compile under way is no quiet: the timer waits for its end. (A rank that waits
        in its compile for another rank's would otherwise publish a snapshot lacking what
        the other is building.)"""
        if not self._publisher:
            return
        with self._lock:
            self._cancel_timer()

    def compile_ended(self) -> None:
        """Re-arm the quiet timer: warm-up has ended when no compile runs for quiet_s."""
        if not self._publisher:
            return
        with self._lock:
            self._cancel_timer()
            self._timer = threading.Timer(self._quiet_s, self.publish)
            self._timer.daemon = True
            self._timer.start()

    def publish(self) -> None:
        """Publish a snapshot if anything was compiled since the last one (rank 0 only)."""
        if not self._publisher:
            return
        with self._lock:
            self._cancel_timer()
            count = self._compiled_count()
            if count <= self._published_at_count:
                return
            self._published_at_count = count
        try:
            with self._stats.phase("snapshot_publish", tag=self._tag):
                self._publish()
        except Exception as exc:  # noqa: BLE001 - a snapshot is an optimisation
            log.warning("publishing snapshot %r failed: %s", self._tag, exc)

    def _publish(self) -> None:
        import torch

        saved = torch.compiler.save_cache_artifacts()
        payload = saved[0] if saved is not None else b""
        if self._name_entries is not None:
            self._name_entries()
        manifest = {"entries": dict(self._entry_names)}
        blob = compress(bundle.pack(payload, self._kernels.snapshot_files(), manifest))
        if len(blob) > MAX_SNAPSHOT_BYTES:
            log.warning("snapshot %r would be %d bytes; not publishing it", self._tag,
                        len(blob))
            return
        if self._store.put_snapshot(self._tag, blob) is not None:
            log.info("published snapshot %r (%d bytes)", self._tag, len(blob))

    def cancel(self) -> None:
        with self._lock:
            self._cancel_timer()

    def _cancel_timer(self) -> None:
        """Under self._lock."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _prefetch(self) -> None:
        try:
            with self._stats.phase("snapshot_fetch"):
                blob = self._store.get_snapshot(self._tag)
            if blob is None:
                log.debug("no snapshot %r yet", self._tag)
                return
            self.loaded_digest = sealed.digest_of(blob)
            node = self._node
            if node is None:
                self._entry_names.update(self._place(blob))
                return
            # One process per node unpacks it: the local caches it fills are the node's.
            note = "snapshot-" + hashlib.sha256(
                (self.loaded_digest + repr(self._kernels.dirs())).encode()).hexdigest()
            with node.lock(note, f"placing snapshot {self._tag!r}"):
                done = node.note(note)
                if done is not None:
                    self._entry_names.update(json.loads(done))
                    with open_decompressed(blob) as stream:  # its header alone
                        self._kernels.note_received(bundle.Reader(stream).names)
                    log.info("snapshot %r already placed on this node", self._tag)
                    return
                entries = self._place(blob)
                node.leave_note(note, json.dumps(entries).encode())
            self._entry_names.update(entries)
        except Exception as exc:  # noqa: BLE001 - without it, per-key lookups still work
            log.warning("loading snapshot %r failed (%s); per-key lookups go on", self._tag, exc)
        finally:
            self.ready.set()

    def _await_compile_stack(self) -> bool:
        stack = self._compile_stack
        if stack is None or stack.wait(COMPILE_STACK_WAIT_S):
            return True
        log.warning("torch's compile stack still not imported after %.0f s; snapshot %r "
                    "goes on without its Mega-Cache", COMPILE_STACK_WAIT_S, self._tag)
        return False

    def _place(self, blob: bytes) -> dict[str, str]:
        """Unpack a snapshot into the local caches; returns its manifest's entry names.

        Streamed: its largest file, Inductor's precompiled header (~150 MB on CPU), goes
        from the decompressor to disk a chunk at a time, not through three copies in memory.
        """
        with self._stats.phase("snapshot_place_files"), open_decompressed(blob) as stream:
            contents = bundle.Reader(stream)
            placed = self._kernels.place_from(contents.files())
            contents.check_end()
        if contents.payload and self._await_compile_stack():
            import torch

            with self._stats.phase("snapshot_load_megacache"):
                torch.compiler.load_cache_artifacts(contents.payload)
        log.info("loaded snapshot %r: %d bytes, %d files placed", self._tag, len(blob), placed)
        entries = contents.meta.get("entries", {})
        if not isinstance(entries, dict):
            return {}
        return {d: n for d, n in entries.items() if isinstance(n, str) and "/" not in n}
