"""The artifact store: verified, content-addressed objects plus an index of variants per key."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import fsspec

from storage import bytecode, sealed
from storage.errors import IntegrityError, StoreConfigError, StoreReadOnly, StoreUnavailable
from storage.layout import Layout, decode_segment, is_digest, is_fingerprint, versions_dir
from storage.listing import find_files, list_dirs, list_files
from storage.location import (
    backend_packages,
    check,
    import_backends,
    move,
    read_json,
    resolve,
    write_atomic,
)
from storage.node_cache import NodeCache
from storage.retry import Retrier
from storage.signing import load_signing_key

log = logging.getLogger(__name__)


@dataclass
class StoreStats:
    """Counters of one store handle, for the end-of-job summary."""

    gets: int = 0
    hits: int = 0
    puts: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    errors: int = 0
    quarantined: int = 0
    node_cache_hits: int = 0
    fetches: int = 0  # objects downloaded from the store (not served by the node cache)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class ArtifactStore:
    """Get and publish artifacts of one fingerprint under one store URL.

    Reads fail closed on integrity (a bad object is quarantined and skipped) and raise
    StoreUnavailable on outages, which callers turn into a local compile.
    """

    def __init__(self, url: str, fs: fsspec.AbstractFileSystem, root: str, fingerprint: str,
                 signing_key: bytes | None, retrier: Retrier,
                 node_cache: NodeCache | None = None) -> None:
        self.url = url
        self.fs = fs
        self.root = root
        self.fingerprint = fingerprint
        self.layout = Layout(root, fingerprint)
        self.stats = StoreStats()
        self.node_cache = node_cache
        self._key = signing_key
        self._retrier = retrier
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self._read_only = False

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r}, fingerprint={self.fingerprint!r})"

    @property
    def read_only(self) -> bool:
        """Whether this store has refused a write (reads still work)."""
        return self._read_only

    @property
    def opened(self) -> bool:
        """Always: this store is opened before it exists (FailOpenStore's may not be yet)."""
        return True

    @property
    def signed(self) -> bool:
        """Whether this handle signs what it writes and refuses unsigned objects."""
        return self._key is not None

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + delta)

    # -- reads -----------------------------------------------------------------------------

    def get_variants(self, kind: str, key: str) -> list[bytes]:
        """All verified variants stored under (kind, key), newest first; [] on a miss."""
        self._count(gets=1)
        payloads = self._read_entries(self.layout.variants_dir(kind, key), first_only=False)
        if payloads:
            self._count(hits=1)
        return payloads

    def list_index(self) -> dict[tuple[str, str], list[str]]:
        """Every (kind, key) of this fingerprint with its variants' digests, newest first.

        One recursive listing (a paginated LIST on object stores) instead of one per key:
        a job reads it once at start-up, so that its lookups need no store request.
        """
        base = self.layout.index_dir
        with self._errors_counted():
            files = find_files(self.fs, base, self._retrier)
        found: dict[tuple[str, str], list[tuple[float, str]]] = {}
        for f in files:
            parts = f.path[len(base):].strip("/").split("/")
            if len(parts) == 3 and is_digest(parts[2]):
                kind, key = decode_segment(parts[0]), decode_segment(parts[1])
                found.setdefault((kind, key), []).append((-f.mtime, parts[2]))
        return {k: [d for _, d in sorted(v)] for k, v in found.items()}

    def list_variants(self, kind: str, key: str) -> list[str]:
        """The digests of the variants stored under (kind, key), newest first."""
        with self._errors_counted():
            return self._digests_in(self.layout.variants_dir(kind, key))

    def get_object(self, digest: str) -> bytes | None:
        """One object's verified payload; None if it is gone or failed verification."""
        self._count(gets=1)
        with self._errors_counted():
            payload = self._load(digest)
        if payload is not None:
            self._count(hits=1)
        return payload

    def get_snapshot(self, tag: str) -> bytes | None:
        """The newest verified snapshot published under `tag`, or None."""
        self._count(gets=1)
        payloads = self._read_entries(self.layout.snapshot_dir(tag), first_only=True)
        if payloads:
            self._count(hits=1)
        return payloads[0] if payloads else None

    def get_components(self, kind: str, key: str) -> dict[str, list[str]] | None:
        """The cache-key components published beside (kind, key)'s entries, if any."""
        return self._read_json(self.layout.components_path(kind, key))

    def environments(self) -> dict[str, dict[str, str]]:
        """What every fingerprint in this store stands for (torch, Triton, CUDA, GPU, ...)."""
        out = {}
        for fp in list_dirs(self.fs, versions_dir(self.root), self._retrier):
            fields = self._read_json(Layout(self.root, fp).environment_path)
            if isinstance(fields, dict):
                out[fp] = fields
        return out

    def _read_json(self, path: str) -> Any:
        """A small plain-JSON note; None if missing or malformed (it only informs)."""
        with self._errors_counted():
            return read_json(self.fs, path, self._retrier)

    @contextlib.contextmanager
    def _errors_counted(self) -> Iterator[None]:
        try:
            yield
        except StoreUnavailable:
            self._count(errors=1)
            raise

    def _digests_in(self, directory: str) -> list[str]:
        """The entries (named by digest) directly under `directory`, newest first."""
        files = [f for f in list_files(self.fs, directory, self._retrier) if is_digest(f.name)]
        return [f.name for f in sorted(files, key=lambda f: (-f.mtime, f.name))]

    def _read_entries(self, directory: str, first_only: bool) -> list[bytes]:
        with self._errors_counted():
            out: list[bytes] = []
            for digest in self._digests_in(directory):
                payload = self._load(digest)
                if payload is not None:
                    out.append(payload)
                    if first_only:
                        break
            return out

    def _load(self, digest: str) -> bytes | None:
        """The verified payload of an object; None if it is missing or was just quarantined."""
        try:
            return self._load_verified(digest)
        except FileNotFoundError:
            log.debug("index of %s names missing object %s (pruned or quarantined)",
                      self.url, digest)
            return None
        except IntegrityError as e:
            self._quarantine(digest, e)
            return None

    def _fetch(self, digest: str) -> bytes:
        path = self.layout.object_path(digest)
        blob = self._retrier.call("get object", lambda: self.fs.cat_file(path))
        self._count(fetches=1, bytes_read=len(blob))
        return blob

    def _from_node_cache(self, digest: str) -> bytes | None:
        assert self.node_cache is not None
        blob = self.node_cache.get(digest)
        if blob is None:
            return None
        try:
            payload = sealed.decode(blob, digest, self._key)
        except IntegrityError as e:
            log.warning("node cache copy of %s failed verification (%s); fetching again",
                        digest, e)
            self.node_cache.discard(digest)
            return None
        self._count(node_cache_hits=1)
        return payload

    def _load_verified(self, digest: str) -> bytes:
        nc = self.node_cache
        if nc is None:
            return sealed.decode(self._fetch(digest), digest, self._key)
        payload = self._from_node_cache(digest)
        if payload is not None:
            return payload
        # The first process on the node downloads; the rest wait.
        with nc.lock(digest, f"the download of object {digest[:12]}"):
            payload = self._from_node_cache(digest)
            if payload is not None:
                return payload
            blob = self._fetch(digest)
            payload = sealed.decode(blob, digest, self._key)
            self._keep_on_node(digest, blob)
            return payload

    def _keep_on_node(self, digest: str, blob: bytes) -> bool:
        """A copy for this machine's other processes, and whether it was kept; a node cache
        we cannot write is skipped (one warning), never an error."""
        nc = self.node_cache
        if nc is None:
            return False
        try:
            return nc.put(digest, blob)
        except OSError as e:
            if "node cache" not in self._warned:
                self._warned.add("node cache")
                log.warning("node cache %s not writable (%s); continuing without it",
                            nc.dir, e)
            return False

    def _quarantine(self, digest: str, err: IntegrityError) -> None:
        """Move a bad object aside so that no reader trips over it again, and say so once."""
        self._count(quarantined=1)
        if digest not in self._warned:
            self._warned.add(digest)
            log.warning("store %s: object %s refused and quarantined: %s", self.url, digest, err)
        src = self.layout.object_path(digest)
        dst = self.layout.quarantine_path(digest, str(time.time_ns()))
        try:
            self._retrier.call("quarantine", lambda: move(self.fs, src, dst))
        except FileNotFoundError:
            pass  # another reader moved it first
        except StoreUnavailable as e:
            log.warning("could not quarantine %s: %s", digest, e)

    # -- writes ----------------------------------------------------------------------------

    def put(self, kind: str, key: str, data: bytes,
            on_node: Callable[[str], None] | None = None) -> str:
        """Publish one variant under (kind, key); returns its sha256 hex digest.
        `on_node(digest)` is called once this machine's other processes can read it from
        the node cache, before the upload (not at all without a node copy)."""
        return self._publish(self.layout.variants_dir(kind, key), data, on_node)

    def put_snapshot(self, tag: str, data: bytes) -> str:
        """Publish a bulk snapshot (e.g. torch.compiler.save_cache_artifacts bytes) under `tag`."""
        return self._publish(self.layout.snapshot_dir(tag), data)

    def put_components(self, kind: str, key: str, components: dict[str, list[str]]) -> None:
        """Keep (kind, key)'s cache-key components beside its entries, to explain misses."""
        self._write_json(self.layout.components_path(kind, key), components)

    def describe_environment(self, fields: dict[str, str]) -> None:
        """Say once what this store's fingerprint stands for (read by `pt2cc` and `explain`)."""
        if self._read_json(self.layout.environment_path) != fields:
            self._write_json(self.layout.environment_path, fields)

    def record_use(self, job: str, digests: list[str]) -> None:
        """One small object per job naming what it loaded: `prune` counts age from last use."""
        self._write_json(self.layout.used_path(job), {"job": job, "time": time.time(),
                                                       "digests": sorted(set(digests))})

    def _write_json(self, path: str, doc: object) -> None:
        data = json.dumps(doc, sort_keys=True).encode()
        with self._writing():
            self._retrier.call("put", lambda: write_atomic(self.fs, path, data))
        self._count(puts=1, bytes_written=len(data))

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Count a failed write; a refused one leaves this handle read-only."""
        try:
            yield
        except FileNotFoundError as e:  # e.g. the bucket vanished under us
            self._count(errors=1)
            raise StoreUnavailable(f"store {self.url}: put failed: {e}") from e
        except StoreUnavailable as e:
            self._count(errors=1)
            if isinstance(e.__cause__, PermissionError):
                self._read_only = True
                raise StoreReadOnly(f"store {self.url} refused a write: {e}") from e
            raise

    def _publish(self, entry_dir: str, data: bytes,
                 on_node: Callable[[str], None] | None = None) -> str:
        """A copy in the node cache first (the machine's waiting ranks read it there while
        the upload runs); then the object, then the entry, so a live writer never leaves
        an entry without object.

        The object is written even when it exists: the write is idempotent, repairs a
        damaged copy and refreshes its mtime, which keeps `prune` from removing it while
        this entry is being added.
        """
        digest = sealed.digest_of(data)
        blob = sealed.encode(data, self._key)
        if self._keep_on_node(digest, blob) and on_node is not None:
            try:
                on_node(digest)
            except Exception:  # the caller's: the upload still happens
                log.exception("telling this node's readers about %s failed", digest)
        obj = self.layout.object_path(digest)
        entry = f"{entry_dir}/{digest}"
        marker = digest.encode()
        with self._writing():
            self._retrier.call("put object", lambda: write_atomic(self.fs, obj, blob))
            self._retrier.call("put entry", lambda: write_atomic(self.fs, entry, marker))
        self._count(puts=1, bytes_written=len(blob) + len(marker))
        return digest


@dataclass(frozen=True)
class PreparedStore:
    """A store whose input is checked, not yet opened: `open` does what needs the network.

    The coordinator checks at launch (bad input stops the job there), then opens it on
    the store's own thread within a deadline: on S3 opening imports s3fs and lists the
    bucket, and a store slow to answer must not hold the launch for botocore's retries.
    """

    url: str
    fingerprint: str
    storage_options: dict[str, Any] | None
    key: bytes | None
    retrier: Retrier
    node_cache: NodeCache | None

    def open(self) -> ArtifactStore:
        """Raises StoreConfigError for what only the store can tell (a missing bucket,
        refused credentials) and StoreUnavailable when it does not answer."""
        with bytecode.kept_under(self.node_cache.bytecode_dir if self.node_cache else None,
                                 backend_packages(self.url)):
            import_backends(self.url)
        fs, root = resolve(self.url, self.storage_options, self.retrier)
        return ArtifactStore(self.url, fs, root, self.fingerprint, self.key, self.retrier,
                             self.node_cache)


def prepare_store(url: str, *, fingerprint: str,
                  storage_options: dict[str, Any] | None = None,
                  node_cache_dir: str | None = None, node_cache_max_bytes: int = 10 * 2**30,
                  signing_key: bytes | None = None, retries: int = 5,
                  timeout_s: float = 30.0) -> PreparedStore:
    """Check everything about opening `url` that needs neither the network nor the
    backend's import; raises StoreConfigError naming the problem and the fix."""
    if not is_fingerprint(fingerprint):
        raise StoreConfigError(
            f"fingerprint {fingerprint!r} is not a plain path segment; use letters, digits, "
            "'.', '_', '+' and '-' (not starting with '.')"
        )
    if retries < 1 or timeout_s <= 0:
        raise StoreConfigError("retries must be >= 1 and timeout_s > 0")
    key = load_signing_key(signing_key)
    check(url)
    node_cache = None
    if node_cache_dir:
        try:
            # A live holder's store call ends within twice the timeout (a download's
            # retries may take longer): its waiters go on alone after twice that.
            node_cache = NodeCache(node_cache_dir, node_cache_max_bytes,
                                   lock_wait_s=4 * timeout_s)
        except OSError as e:
            raise StoreConfigError(
                f"node cache directory {node_cache_dir} is not usable ({e}); "
                "point it at a writable local directory"
            ) from e
    return PreparedStore(url, fingerprint, storage_options, key,
                         Retrier(url, attempts=retries, timeout_s=timeout_s), node_cache)


def open_store(url: str, **settings: Any) -> ArtifactStore:
    """Open the store at `url` (a path, file://, memory://, s3://bucket/prefix, any fsspec URL).

    Connection settings come the fsspec way: `storage_options`, fsspec's config, and the
    backend's own environment variables (AWS_ENDPOINT_URL, AWS_PROFILE, ...). With
    `signing_key` None the key comes from PT2CC_SIGNING_KEY or PT2CC_SIGNING_KEY_FILE.
    `settings` are `prepare_store`'s. Raises StoreConfigError naming the problem and the
    fix for bad input, StoreUnavailable when the store does not answer.
    """
    return prepare_store(url, **settings).open()
