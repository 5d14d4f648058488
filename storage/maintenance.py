"""Walking a whole store (every fingerprint under v1/) for `pt2cc`: stats, verify and prune."""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import fsspec

from storage import sealed
from storage.errors import IntegrityError
from storage.layout import (
    COMPONENTS,
    ENVIRONMENT,
    INDEX,
    OBJECTS,
    QUARANTINE,
    SNAPSHOTS,
    USED,
    Layout,
    decode_segment,
    is_digest,
    versions_dir,
)
from storage.listing import FileInfo, find_files
from storage.location import move, read_json
from storage.retry import Retrier

log = logging.getLogger(__name__)

# What a running job may have published but not yet indexed: never removed.
MIN_AGE_S = 3600.0


@dataclass(frozen=True)
class Entry:
    """One entry of the index (`section` "index") or of the snapshots ("snapshots") and the
    object it names; size is None if the object is gone."""

    fingerprint: str
    kind: str  # "snapshot" in the snapshots section
    key: str  # the snapshot's tag in the snapshots section
    digest: str
    size: int | None
    mtime: float
    section: str = INDEX


@dataclass
class Scan:
    """One recursive listing of a store, parsed (and its records of use, read)."""

    entries: list[Entry] = field(default_factory=list)
    entry_paths: dict[Entry, str] = field(default_factory=dict)
    objects: dict[tuple[str, str], FileInfo] = field(default_factory=dict)  # (fp, digest)
    quarantine: list[tuple[str, FileInfo]] = field(default_factory=list)  # (fp, file)
    components: dict[tuple[str, str, str], FileInfo] = field(default_factory=dict)
    used: list[tuple[str, FileInfo]] = field(default_factory=list)  # (fp, a job's record)
    last_used: dict[tuple[str, str], float] = field(default_factory=dict)  # (fp, digest)
    environments: dict[str, dict[str, str]] = field(default_factory=dict)

    def last_use(self, e: Entry) -> float:
        """When a job last loaded the entry's object, or it was published if that is later."""
        return max(e.mtime, self.last_used.get((e.fingerprint, e.digest), 0.0))

    @property
    def fingerprints(self) -> list[str]:
        fps = {fp for fp, _ in self.objects} | {e.fingerprint for e in self.entries}
        return sorted(fps | {fp for fp, _ in self.quarantine})


def scan(fs: fsspec.AbstractFileSystem, root: str, retrier: Retrier,
         fingerprints: list[str] | None = None) -> Scan:
    """List every object, entry and quarantined file under `root` (all fingerprints by default)."""
    base = versions_dir(root)
    if fingerprints is None:
        files = find_files(fs, base, retrier)
    else:
        files = [f for fp in fingerprints for f in find_files(fs, f"{base}/{fp}", retrier)]
    result = Scan()
    pending: list[tuple[str, str, str, str, str, FileInfo]] = []
    for f in files:
        rel = f.path[len(base):].strip("/") if f.path.startswith(base) else ""
        parts = rel.split("/")
        if parts[1:] == [ENVIRONMENT]:
            if isinstance(doc := read_json(fs, f.path, retrier), dict):
                result.environments[parts[0]] = {str(k): str(v) for k, v in doc.items()}
            continue
        if len(parts) < 3:
            continue
        fp, section = parts[0], parts[1]
        if section == USED and len(parts) == 3:
            result.used.append((fp, f))
            doc = read_json(fs, f.path, retrier)
            for digest in doc.get("digests", []) if isinstance(doc, dict) else []:
                ident = (fp, str(digest))
                result.last_used[ident] = max(result.last_used.get(ident, 0.0), f.mtime)
        elif section == INDEX and len(parts) == 5 and parts[4] == COMPONENTS:
            result.components[(fp, decode_segment(parts[2]), decode_segment(parts[3]))] = f
        elif section == OBJECTS and len(parts) == 4 and is_digest(parts[3]):
            result.objects[(fp, parts[3])] = f
        elif section == QUARANTINE and len(parts) == 3:
            result.quarantine.append((fp, f))
        elif section == INDEX and len(parts) == 5 and is_digest(parts[4]):
            pending.append((fp, decode_segment(parts[2]), decode_segment(parts[3]), parts[4],
                            INDEX, f))
        elif section == SNAPSHOTS and len(parts) == 4 and is_digest(parts[3]):
            pending.append((fp, "snapshot", decode_segment(parts[2]), parts[3], SNAPSHOTS, f))
    for fp, kind, key, digest, section, f in pending:
        obj = result.objects.get((fp, digest))
        entry = Entry(fp, kind, key, digest, obj.size if obj else None, f.mtime, section)
        result.entries.append(entry)
        result.entry_paths[entry] = f.path
    result.entries.sort(key=lambda e: (e.fingerprint, e.section, e.kind, e.key, -e.mtime))
    return result


def summarize(s: Scan) -> dict[str, dict[str, int]]:
    """Per fingerprint: entries, keys, objects, bytes, quarantined files, dangling entries."""
    out: dict[str, dict[str, int]] = {}
    for fp in s.fingerprints:
        entries = [e for e in s.entries if e.fingerprint == fp]
        objs = [o for (f, _), o in s.objects.items() if f == fp]
        quarantined = [q for f, q in s.quarantine if f == fp]
        out[fp] = {
            "entries": len(entries),
            "keys": len({(e.section, e.kind, e.key) for e in entries}),
            "objects": len(objs),
            "bytes": sum(o.size for o in objs),
            "quarantined": len(quarantined),
            "quarantined_bytes": sum(q.size for q in quarantined),
            "dangling": sum(e.size is None for e in entries),
        }
    return out


@dataclass
class VerifyReport:
    """What `verify` found: bad objects (fp, digest, reason) and entries naming missing objects."""

    checked: int = 0
    bad: list[tuple[str, str, str]] = field(default_factory=list)
    dangling: list[Entry] = field(default_factory=list)
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return not self.bad and not self.dangling

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "bad": [{"fingerprint": f, "digest": d, "reason": r} for f, d, r in self.bad],
            "dangling": [{"fingerprint": e.fingerprint, "kind": e.kind, "key": e.key,
                          "digest": e.digest} for e in self.dangling],
            "repaired": self.repaired,
        }


def verify(fs: fsspec.AbstractFileSystem, root: str, retrier: Retrier,
           signing_key: bytes | None, quarantine: bool = False) -> VerifyReport:
    """Re-hash (and with a key, check the signature of) every object under `root`.

    With `quarantine`, bad objects are moved aside and every entry naming a bad or missing
    object is removed, so a second run reports a clean store.
    """
    s = scan(fs, root, retrier)
    report = VerifyReport()
    for (fp, digest), obj in sorted(s.objects.items()):
        report.checked += 1
        try:
            blob = retrier.call("read object", lambda p=obj.path: fs.cat_file(p))
            sealed.decode(blob, digest, signing_key)
        except FileNotFoundError:
            continue  # removed since the listing
        except IntegrityError as e:
            report.bad.append((fp, digest, str(e)))
    report.dangling = [e for e in s.entries if e.size is None]
    if quarantine and not report.ok:
        bad = {(fp, d) for fp, d, _ in report.bad}
        for fp, digest in sorted(bad):
            dst = Layout(root, fp).quarantine_path(digest, str(time.time_ns()))
            with contextlib.suppress(FileNotFoundError):
                retrier.call("quarantine", lambda o=s.objects[(fp, digest)].path, d=dst:
                             move(fs, o, d))
            log.warning("quarantined %s/%s", fp, digest)
        stale = [s.entry_paths[e] for e in s.entries
                 if e.size is None or (e.fingerprint, e.digest) in bad]
        _remove(fs, stale, retrier)
        report.repaired = True
    return report


@dataclass
class PrunePlan:
    """What `prune` removes (or would remove, in a dry run), and the bytes before and after."""

    entries: list[Entry] = field(default_factory=list)
    objects: list[tuple[str, str]] = field(default_factory=list)
    quarantine: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # old records of use, orphaned components
    bytes_before: int = 0
    bytes_freed: int = 0
    applied: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "entries": len(self.entries),
            "objects": len(self.objects),
            "quarantined_files": len(self.quarantine),
            "notes": len(self.notes),
            "bytes_before": self.bytes_before,
            "bytes_freed": self.bytes_freed,
            "bytes_after": self.bytes_before - self.bytes_freed,
        }


def plan_prune(s: Scan, older_than_s: float | None, max_bytes: int | None,
               now: float | None = None, min_age_s: float = MIN_AGE_S) -> PrunePlan:
    """Choose entries not used for `older_than_s`, then the least recently used others
    until under `max_bytes`.

    An entry's age counts from its last use: the newest record of a job that loaded it,
    or its publish if that is later. Nothing younger than `min_age_s` is chosen: a running
    job may have written an object whose index entry is not there yet. Objects go only
    when no kept entry names them; a key's components go with its last entry.
    """
    now = time.time() if now is None else now
    settled = now - min_age_s
    plan = PrunePlan()
    plan.bytes_before = sum(o.size for o in s.objects.values()) + sum(q.size
                                                                      for _, q in s.quarantine)
    refs = Counter((e.fingerprint, e.digest) for e in s.entries)
    chosen: set[Entry] = set()
    freed: set[tuple[str, str]] = set()

    def drop(e: Entry) -> None:
        chosen.add(e)
        ident = (e.fingerprint, e.digest)
        refs[ident] -= 1
        obj = s.objects.get(ident)
        if refs[ident] == 0 and obj is not None and obj.mtime < settled:
            freed.add(ident)
            plan.bytes_freed += obj.size

    age_cut = None if older_than_s is None else now - max(older_than_s, min_age_s)
    by_age = sorted(s.entries, key=s.last_use)
    for e in by_age:
        if e.mtime < settled and (e.size is None or
                                  (age_cut is not None and s.last_use(e) < age_cut)):
            drop(e)
    for ident, obj in s.objects.items():  # orphans: no entry names them
        if refs[ident] <= 0 and ident not in freed and obj.mtime < settled:
            freed.add(ident)
            plan.bytes_freed += obj.size
    old_q = sorted((q for _, q in s.quarantine if q.mtime < settled), key=lambda q: q.mtime)
    for q in old_q:
        if age_cut is not None and q.mtime < age_cut:
            plan.quarantine.append(q.path)
            plan.bytes_freed += q.size
    if max_bytes is not None:
        for q in old_q:
            if plan.bytes_before - plan.bytes_freed <= max_bytes:
                break
            if q.path not in plan.quarantine:
                plan.quarantine.append(q.path)
                plan.bytes_freed += q.size
        for e in by_age:
            if plan.bytes_before - plan.bytes_freed <= max_bytes or s.last_use(e) >= settled:
                break
            if e not in chosen and e.mtime < settled:
                drop(e)
    plan.entries = [e for e in by_age if e in chosen]
    kept = {(e.fingerprint, e.kind, e.key) for e in s.entries if e not in chosen}
    plan.notes = [f.path for k, f in s.components.items() if k not in kept and f.mtime < settled]
    plan.notes += [f.path for _, f in s.used
                   if f.mtime < settled and age_cut is not None and f.mtime < age_cut]
    plan.objects = sorted(freed)
    return plan


def apply_prune(fs: fsspec.AbstractFileSystem, root: str, retrier: Retrier, plan: PrunePlan,
                s: Scan, min_age_s: float = MIN_AGE_S) -> None:
    """Remove the plan's entries, then objects that are still unreferenced after a fresh scan.

    The second scan catches entries published while pruning, so no entry is left naming a
    removed object.
    """
    _remove(fs, [s.entry_paths[e] for e in plan.entries], retrier)
    fresh = scan(fs, root, retrier)
    referenced = {(e.fingerprint, e.digest) for e in fresh.entries}
    indexed = {(e.fingerprint, e.kind, e.key) for e in fresh.entries}
    orphaned = {f.path for k, f in fresh.components.items() if k not in indexed}
    settled = time.time() - min_age_s
    doomed = []
    for ident in plan.objects:
        obj = fresh.objects.get(ident)
        if obj is not None and ident not in referenced and obj.mtime < settled:
            doomed.append(obj.path)
    notes = [p for p in plan.notes if p in orphaned or "/" + USED + "/" in p]
    _remove(fs, doomed + plan.quarantine + notes, retrier)
    plan.applied = True


def _remove(fs: fsspec.AbstractFileSystem, paths: list[str], retrier: Retrier) -> None:
    for i in range(0, len(paths), 500):
        batch = paths[i:i + 500]
        try:
            retrier.call("remove", lambda b=batch: fs.rm(b))
        except FileNotFoundError:
            for p in batch:
                with contextlib.suppress(FileNotFoundError):
                    retrier.call("remove", lambda p=p: fs.rm_file(p))


def group_entries(entries: list[Entry], last_used: dict[tuple[str, str], float] | None = None,
                  ) -> list[dict[str, Any]]:
    """Entries grouped per (fingerprint, kind, key): variants, bytes, newest publish and
    last use by a job (None if no job recorded one)."""
    last_used = last_used or {}
    groups: dict[tuple[str, str, str, str], list[Entry]] = defaultdict(list)
    for e in entries:
        groups[(e.fingerprint, e.section, e.kind, e.key)].append(e)
    return [
        {
            "fingerprint": fp,
            "kind": kind,
            "key": key,
            "snapshot": section == SNAPSHOTS,
            "variants": len(es),
            "bytes": sum(e.size or 0 for e in es),
            "newest": max(e.mtime for e in es),
            "last_used": max((last_used.get((fp, e.digest), 0.0) for e in es), default=0.0)
            or None,
            "digests": [e.digest for e in es],
        }
        for (fp, section, kind, key), es in sorted(groups.items())
    ]


@dataclass
class StoreRoot:
    """A store URL opened for maintenance: every fingerprint under it, no signing policy."""

    url: str
    fs: fsspec.AbstractFileSystem
    root: str
    retrier: Retrier


def open_root(url: str, storage_options: dict[str, Any] | None = None, retries: int = 5,
              timeout_s: float = 30.0) -> StoreRoot:
    """Resolve `url` with the same checks and error messages as `open_store`."""
    from storage.location import resolve

    retrier = Retrier(url, attempts=retries, timeout_s=timeout_s)
    fs, root = resolve(url, storage_options, retrier)
    return StoreRoot(url, fs, root, retrier)
