"""The policy behind PyTorch's cache lookups: store first, then single-flight, then compile.

`hooks.py` forwards PyTorch's calls here and holds no policy of its own; the store it is
given fails open (storage/fail_open.py): an outage is a miss. Nothing in this module
raises into a compile: a bug here is logged with its traceback and costs a local compile.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from coordinator import bundle, compat
from coordinator.background import Background
from coordinator.explain import Explainer
from coordinator.kernels import KernelFiles
from coordinator.single_flight import SingleFlight, Waited, WaitResult
from coordinator.snapshot import Snapshots
from coordinator.stats import RankStats
from storage.api import Store
from storage.atomic import write_file
from storage.node_cache import NodeCache

log = logging.getLogger(__name__)

# Kinds whose miss is worth one rank compiling while the others wait: an FX graph is where
# Inductor spends the compile. AOTAutograd entries are looked up *before* AOTAutograd
# decides to bypass its cache (it does under DDP's graph splitting), so a claim there
# would be held for a whole compile and never published; ranks trace AOT themselves and
# meet at the FX graph. Autotune and PGO lookups repeat and are often never saved.
CLAIMING_KINDS = frozenset({"fxgraph"})
# Kinds whose local entries PyTorch evaluates guards on (GuardedCache subclasses).
GUARDED_KINDS = frozenset({"fxgraph", "aotautograd"})
# Kinds looked up in the start-up index only, never listed again: Inductor looks up one
# autotune result per Triton kernel it loads (tens per graph), and the ranks of a job tune
# the same kernel at about the same time, so a second listing would seldom find another
# rank's result and would cost every rank a store request per kernel on its compile thread.
INDEX_ONLY_KINDS = frozenset({"autotune", "bundled-autotune"})
# Listings a node's first process leaves for the others of the job, kept an hour.
JOB_NOTE, JOB_NOTE_KEPT_S = "job-", 3600.0


class Artifacts:
    """Looks up, waits for and publishes one process's compiled artifacts.

    The store's index is listed once, in the background at start-up (`start_prefetch`), so
    a warm lookup needs no store request: every variant of a key that this process has not
    offered yet is put into PyTorch's local dir before each guard evaluation, unless the
    snapshot already put the same entry there (`entry_names`, digest -> local file name).
    A key is listed again only where a compile is about to happen, once per node and job:
    by a claimant, and by the first process of a node to miss a key that never claims
    (except autotune results: `INDEX_ONLY_KINDS`). A waiter lists nothing: it takes the
    variant the claimant names.
    """

    def __init__(self, store: Store | None, flight: SingleFlight, kernels: KernelFiles,
                 stats: RankStats, snapshots: Snapshots | None = None,
                 ready_wait_s: float = 60.0, entry_names: dict[str, str] | None = None,
                 explainer: Explainer | None = None, node: NodeCache | None = None) -> None:
        self._store = store
        self._node = node
        self._explainer = explainer
        self._snapshots = snapshots
        self._ready_wait_s = ready_wait_s
        self._flight = flight
        self._kernels = kernels
        self._stats = stats
        self._listed: dict[tuple[str, str], list[str]] = {}  # stored digests, newest first
        self._relisted: set[tuple[str, str]] = set()  # keys listed one by one
        self._index_ready = threading.Event()
        self._index_started = False
        self._offered: dict[tuple[str, str], set[str]] = {}  # digests handed to PyTorch
        self._subdirs: dict[tuple[str, str], str] = {}  # PyTorch's local dir of guarded keys
        self._specialised: set[tuple[str, str]] = set()  # keys whose guards rejected a variant
        self._waited: dict[tuple[str, str], float] = {}  # seconds of the last wait per key
        # (kind, key, variant) -> local entry name: built here, published by another rank
        self._kept_locally: dict[tuple[str, str, str], str] = {}
        self._missed_at: dict[tuple[str, str], float] = {}  # wall time PyTorch began compiling
        self._compiles = threading.local()  # wall time the running Dynamo compile began
        # Digest -> the file name its entry has in PyTorch's local dir: what we published
        # or placed, and what the snapshot placed (shared with Snapshots, which carries it).
        self.entry_names: dict[str, str] = entry_names if entry_names is not None else {}
        self._lock = threading.Lock()
        # No publish runs on the compile thread. Entries nobody waits for go in order on one
        # thread; a claimed entry, which waiters wait for, on its own, not behind them.
        self._publisher = Background("pt2cc-publish")
        self._claimed_uploads = Background("pt2cc-publish-claimed")
        if store is None:
            self._index_ready.set()

    def start_prefetch(self) -> None:
        """List the store's index in the background (one recursive listing per process);
        without this call, the first lookup lists it."""
        with self._lock:
            if self._index_started or self._store is None:
                return
            self._index_started = True
        threading.Thread(target=self._list_index, name="pt2cc-index", daemon=True).start()

    # -- called by the hooks -------------------------------------------------------------

    def offer_local(self, kind: str, key: str, subdir: str) -> None:
        """Before each guard evaluation: every stored variant not offered yet goes to `subdir`."""
        try:
            self._subdirs[(kind, key)] = subdir
            self._await_ready()
            for digest in self._unseen(kind, key):
                name = self.entry_names.get(digest)
                if name is not None and os.path.exists(os.path.join(subdir, name)):
                    self._note_offered(kind, key, digest)  # the snapshot placed this entry
                    continue
                if (blob := self._get_object(digest)) is not None:
                    self._materialize(kind, key, digest, blob, subdir)
        except Exception:
            log.exception("offering stored variants of %s %s failed", kind, key)

    def get(self, kind: str, key: str) -> bytes | None:
        """PyTorch's remote lookup, reached when no local entry's guards held."""
        try:
            found = self._get(kind, key)
        except Exception:
            log.exception("lookup of %s %s failed; compiling locally", kind, key)
            found = None
        if found is None and kind in GUARDED_KINDS:  # PyTorch compiles it now
            self._missed_at[(kind, key)] = time.time()
            if self._explainer is not None:
                self._explainer.missed(kind, key)
        return found

    def used_digests(self) -> list[str]:
        """Every stored variant this process handed to PyTorch or found placed by the
        snapshot: what the job's record of use keeps from pruning."""
        with self._lock:
            offered = set().union(*self._offered.values()) if self._offered else set()
        return sorted(offered | set(self.entry_names))

    def note_specialised(self, kind: str, key: str) -> None:
        """PyTorch's guards rejected a variant of `key` that has guards, on this rank."""
        self._specialised.add((kind, key))

    def put(self, kind: str, key: str, value: bytes) -> None:
        """PyTorch publishing a fresh entry: stored in the background, so the compile goes
        on. The claim on a claimed entry outlives the compile until it is stored (its
        node's waiters are let in once the node cache has it, the job's others after)."""
        if (waited := self._waited.pop((kind, key), None)) is not None:
            self._stats.wasted_wait_s += waited  # waited, then compiled all the same
        if (started := self._missed_at.pop((kind, key), None)) is not None \
                and self._stats.trace is not None:
            self._stats.trace.span(f"compile {kind}", started, time.time(), key=key,
                                   compile_id=compat.current_compile_id())
        files = self._kernels.take_new() if kind == "fxgraph" else {}  # this compile's
        what = f"publishing {kind} {key}"
        if self._flight.hand_over(kind, key):
            self._claimed_uploads.submit(what, self._publish_claimed, kind, key, value, files)
        else:
            self._publisher.submit(what, self._publish, kind, key, value, files)

    def drain(self, timeout_s: float) -> None:
        """Wait (at exit) for the publishes still on their way to the store."""
        log.debug("waiting up to %.0f s for background publishes", timeout_s)
        deadline = time.monotonic() + timeout_s
        left = self._claimed_uploads.drain(timeout_s)
        left += self._publisher.drain(max(0.0, deadline - time.monotonic()))
        if left:
            log.warning("%d publishes still unfinished after %.0f s; a later job compiles "
                        "them again", left, timeout_s)

    def compile_started(self) -> None:
        """Before anything of a compile runs, the snapshot must be in place: Dynamo reads
        its profile-guided dynamic-shape state (local PGO, on by default, which the
        snapshot's Mega-Cache carries) as it starts on a frame, and the graphs PyTorch
        then loads need the snapshot's entries and CPU probes."""
        self._compiles.started = (time.time(), compat.current_compile_id())
        if self._snapshots is not None:
            self._snapshots.compile_started()
        self._await_ready()

    def compile_ended(self) -> None:
        """A Dynamo compile (or lazy backward compile) ended: no claim outlives it."""
        started = getattr(self._compiles, "started", None)
        if started is not None and self._stats.trace is not None:
            self._stats.trace.span("torch.compile", started[0], time.time(),
                                   compile_id=started[1] or compat.current_compile_id())
        self._flight.finish_all()
        if self._snapshots is not None:
            self._snapshots.compile_ended()

    # -- internals -----------------------------------------------------------------------

    def _get(self, kind: str, key: str) -> bytes | None:
        self._await_ready()
        # A claim promises the waiters a publish: none while the store is not open.
        if kind not in CLAIMING_KINDS or not self._flight.coordinated \
                or self._store is None or not self._store.opened:
            return self._take_fresh(kind, key, relist=kind not in INDEX_ONLY_KINDS
                                    and (kind, key) not in self._relisted)
        if (kind, key) in self._specialised:
            # Stored variants carry guards and none fit this rank: a claimant's, built for
            # its own inputs, would most likely not fit either. Compile now, unless one is
            # already done (it may have had this rank's sizes).
            if (finished := self._flight.finished(kind, key)) is not None:
                return self._take_named(kind, key, finished)
            log.debug("%s %s: variants are specialised and none fits; not waiting", kind, key)
            self._stats.waits_skipped += 1
            return None
        with self._stats.phase("claim", key=key):
            claimed = self._flight.claim(kind, key)
        if claimed:
            self._stats.claimed += 1
            # Another job may have published it since our index listing.
            return self._take_fresh(kind, key, relist=True)
        start = time.monotonic()
        compile_id = compat.current_compile_id()
        with self._stats.phase("wait", key=key, compile_id=compile_id):
            waited = self._flight.wait(kind, key, compile_id)
        self._waited[(kind, key)] = time.monotonic() - start
        if (found := self._take_named(kind, key, waited)) is not None:
            self._stats.loaded_after_wait += 1
        return found

    def _take_named(self, kind: str, key: str, waited: Waited) -> bytes | None:
        """After a claimant is done: the variant it named (published or found), if any."""
        if waited.result is not WaitResult.DONE or waited.variant is None:
            return None
        self._note_listed(kind, key, waited.variant)
        return self._take_fresh(kind, key, relist=False)

    def _publish_claimed(self, kind: str, key: str, value: bytes,
                         files: dict[str, bytes]) -> None:
        digest = None
        try:
            digest = self._publish(kind, key, value, files)
        finally:
            self._flight.finish(kind, key, digest)

    def _publish(self, kind: str, key: str, value: bytes,
                 files: dict[str, bytes]) -> str | None:
        """The published variant's digest; None when nothing was published."""
        try:
            with self._stats.phase("publish", key=key):
                return self._put(kind, key, value, files)
        except Exception:
            log.exception("publishing %s %s failed", kind, key)
            return None

    def _put(self, kind: str, key: str, value: bytes, files: dict[str, bytes]) -> str | None:
        if self._store is None or self._store.read_only:
            return None
        held = self._flight.holds(kind, key)
        variant = None if held else self._variant(kind, value)
        if variant is not None and not self._flight.first_to_publish(kind, key, variant):
            # Ours stays local, named for the snapshot by the publisher's digest later.
            if kind in GUARDED_KINDS and (name := _local_name(value)) is not None:
                with self._lock:
                    self._kept_locally[(kind, key, variant)] = name
            return None
        # Our claim's waiters on this node need not wait for the upload: they read the
        # node's copy.
        on_node = functools.partial(self._flight.let_node_in, kind, key) if held else None
        digest = self._store.put(kind, key, bundle.pack(value, files), on_node)
        if digest is None:
            return None
        if variant is not None:
            self._flight.note_published(kind, key, variant, digest)
        self._note_offered(kind, key, digest)
        if kind in GUARDED_KINDS:
            self._note_entry_name(digest, value)
            if self._explainer is not None:
                self._explainer.published(kind, key)
        with self._lock:  # the compile thread and the publisher both count here
            self._stats.published += 1
        return digest

    def _unseen(self, kind: str, key: str) -> list[str]:
        with self._lock:
            offered = self._offered.get((kind, key), set())
            return [d for d in self._listed.get((kind, key), ()) if d not in offered]

    def _take_fresh(self, kind: str, key: str, *, relist: bool) -> bytes | None:
        """The newest stored variant not offered yet, for PyTorch's remote lookup; the
        others go to the local dir for the next lookup's guard evaluation."""
        if relist:
            self._relist(kind, key)
        subdir = self._subdirs.get((kind, key))
        found: bytes | None = None
        for digest in self._unseen(kind, key):
            if (blob := self._get_object(digest)) is None:
                continue
            if found is not None:
                if subdir is None:
                    break
                self._materialize(kind, key, digest, blob, subdir)
                continue
            found = self._open(kind, key, blob)
            if found is not None:
                self._note_offered(kind, key, digest)
                self._flight.note_variant(kind, key, digest)  # for our claim's waiters
                if kind in GUARDED_KINDS:
                    self._note_entry_name(digest, found)
                self._stats.loaded += 1
        return found

    def _open(self, kind: str, key: str, blob: bytes) -> bytes | None:
        """PyTorch's value inside one stored variant, with its kernel files put in place."""
        try:
            contents = bundle.unpack(blob)
        except bundle.BundleError as exc:
            log.warning("ignoring foreign object under %s %s: %s", kind, key, exc)
            return None
        with self._stats.phase("place_kernels"):
            self._kernels.place(contents.files)
        return contents.payload

    def _materialize(self, kind: str, key: str, digest: str, blob: bytes, subdir: str) -> None:
        payload = self._open(kind, key, blob)
        if payload is None:
            return
        try:
            content = compat.entry_content(payload)
        except ValueError as exc:
            log.warning("ignoring unreadable object under %s %s: %s", kind, key, exc)
            return
        name = compat.local_entry_name(content)
        path = os.path.join(subdir, name)
        if not os.path.exists(path):
            write_file(path, content)
            self._stats.materialized += 1
        self.entry_names[digest] = name
        self._note_offered(kind, key, digest)

    def _note_entry_name(self, digest: str, value: bytes) -> None:
        if (name := _local_name(value)) is not None:
            self.entry_names[digest] = name

    def _list_index(self) -> None:
        try:
            with self._stats.phase("index_listing"):
                listed = self._list_once_per_node()
            if self._explainer is not None:
                self._explainer.index_listed(listed)
            with self._lock:
                for k, digests in listed.items():
                    self._listed.setdefault(k, digests)
            log.debug("store index: %d keys", len(listed))
        finally:
            self._index_ready.set()

    def _list_once_per_node(self) -> dict[tuple[str, str], list[str]]:
        """One process of a node lists the store's index for the job; the node's others
        read what it found (a node of 8 ranks would otherwise list a large store 8 times
        at once, and 1,000 ranks throttle a bucket)."""
        assert self._store is not None
        store = self._store
        found = self._once_per_node("", lambda: [
            [kind, key, digests] for (kind, key), digests in store.list_index().items()])
        return {(kind, key): digests for kind, key, digests in found}

    def _relist(self, kind: str, key: str) -> None:
        """List one key's variants, once per node and job (the node's others read it)."""
        if self._store is None:
            return
        store = self._store
        with self._stats.phase("key_listing"):
            digests = self._once_per_node(f"{kind}\0{key}",
                                          lambda: store.list_variants(kind, key))
        with self._lock:
            self._listed[(kind, key)] = digests
            self._relisted.add((kind, key))

    def _once_per_node(self, what: str, listing: Callable[[], list[Any]]) -> list[Any]:
        """`listing()` run by one process of the node for the job (`what`: "" for the
        index, else a key), the others reading the note it left. An empty index (maybe an
        outage) is not shared: without it the node's every lookup would miss."""
        assert self._store is not None
        node = self._node
        token = self._flight.job_token() if node is not None else None
        if node is None or token is None:
            return listing()
        note = JOB_NOTE + hashlib.sha256(f"{token}\0{self._store.url}\0{what}".encode()
                                         ).hexdigest()
        label = what.replace("\0", " ") or "the index"  # what names: "" or "<kind>\0<key>"
        with node.lock(note, f"the listing of {label}"):
            with contextlib.suppress(ValueError):  # a damaged note: list again
                if (found := node.note(note)) is not None and isinstance(
                        listed := json.loads(found), list):
                    return listed
            listed = listing()
            if listed or what:
                node.leave_note(note, json.dumps(listed).encode())
            if not what:  # once per node and job
                node.forget_notes(JOB_NOTE, JOB_NOTE_KEPT_S)
            return listed

    def _get_object(self, digest: str) -> bytes | None:
        if self._store is None:
            return None
        with self._stats.phase("object_fetch", digest=digest[:12]):
            return self._store.get_object(digest)

    def _await_ready(self) -> None:
        """Never race the snapshot into the local caches, nor look up before the index."""
        self.start_prefetch()
        with self._stats.phase("ready_wait"):
            if self._snapshots is not None and not self._snapshots.ready.is_set():
                self._snapshots.wait_ready(self._ready_wait_s)
            if not self._index_ready.wait(self._ready_wait_s):
                log.warning("store index still listing after %.0f s; looking keys up one by one",
                            self._ready_wait_s)
                self._index_ready.set()

    def _variant(self, kind: str, value: bytes) -> str:
        """Which variant an entry built without a claim is, for `first_to_publish`.

        Every rank that misses a key of a kind nobody claims builds it at once, as do the
        ranks whose guards rejected a claimant's variant; their pickles differ byte for
        byte, so each would add a duplicate variant. The job's first rank to finish an
        entry with these guards publishes it (an atomic count on the job store, no store
        request); a rank with other sizes has other guards and publishes its own variant.
        """
        guards = None
        if kind in GUARDED_KINDS:
            with contextlib.suppress(ValueError):
                guards = compat.entry_guards(compat.entry_content(value))
        return hashlib.sha256(str(guards).encode()).hexdigest()[:32]

    def name_published_twins(self) -> None:
        """Before a snapshot is published: entries this rank built and kept while another
        rank published the same variant are named in its manifest by that rank's digest,
        or a fresh node that places the snapshot would fetch that copy and add it again."""
        with self._lock:
            kept = dict(self._kept_locally)
        for (kind, key, variant), name in kept.items():
            if (digest := self._flight.published_as(kind, key, variant)) is not None:
                self.entry_names[digest] = name
                with self._lock:
                    self._kept_locally.pop((kind, key, variant), None)

    def _note_listed(self, kind: str, key: str, digest: str) -> None:
        with self._lock:
            listed = self._listed.setdefault((kind, key), [])
            if digest not in listed:
                listed.insert(0, digest)

    def _note_offered(self, kind: str, key: str, digest: str) -> None:
        with self._lock:
            self._offered.setdefault((kind, key), set()).add(digest)
        self._note_listed(kind, key, digest)


def _local_name(value: bytes) -> str | None:
    """The file name a guarded entry has in PyTorch's local dir; None if unreadable."""
    try:
        return compat.local_entry_name(compat.entry_content(value))
    except ValueError:
        return None
