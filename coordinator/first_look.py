"""A job's first look at a remote store, one per node: the index and the snapshot.

Opening a remote store in a rank costs its client's imports under the GIL, on the launch's
critical path (storage/warmup.py). Where the store is remote and the node has a cache, the
node's first local rank has a process of its own open the store beside torch's import;
that rank hands what it found (the index, the snapshot's digest) to the node's others as
job notes, the snapshot itself lies in the node cache, and no rank opens the store before
it needs more of it. Where the process itself fails (not the store), the first rank asks
the store instead.
"""

from __future__ import annotations

import contextlib

from coordinator.job_notes import JobNotes
from storage import sealed
from storage.api import Store
from storage.store import PreparedStore
from storage.warmup import Gone, Warmup

INDEX, SNAPSHOT = "", "snapshot\0"  # the notes' names (the index's is the relists' "")
LEADER_SLACK_S = 5.0


class FirstLook:
    """The index and the snapshot for Artifacts and Snapshots, from the node's leader."""

    def __init__(self, notes: JobNotes, store: Store, prepared: PreparedStore,
                 warmup: Warmup | None, *, leader: bool, wait_s: float) -> None:
        self._notes = notes
        self._leader = leader  # the node's first local rank, whose process `warmup` is
        self._store = store
        self._prepared = prepared
        self._warmup = warmup
        self._wait_s = wait_s  # for the process's answer, and the store's (if it fails)
        self._leader_wait_s = 2 * wait_s + LEADER_SLACK_S  # for the leader's note

    def index(self) -> dict[tuple[str, str], list[str]]:
        """The store's index, as `Store.list_index` gives it."""
        found = self._notes.from_leader(INDEX, self._list_index, leader=self._leader,
                                        wait_s=self._leader_wait_s)
        return {(kind, key): digests for kind, key, digests in found}

    def snapshot(self, tag: str) -> bytes | None:
        """The verified payload of the newest snapshot under `tag`, or None."""
        found = self._notes.from_leader(SNAPSHOT + tag, lambda: self._find_snapshot(tag),
                                        leader=self._leader, wait_s=self._leader_wait_s)
        if not found:
            return None
        if (payload := self._prepared.read_on_node(found[0])) is not None:
            return payload
        return self._store.get_snapshot(tag)  # evicted from the node cache since

    def close(self) -> dict[str, int]:
        """Stop the node's process if it still runs; its store counters, to add to ours."""
        if self._warmup is None:
            return {}
        self._warmup.close()
        return self._warmup.stats()

    def _list_index(self) -> list[list[object]]:
        index = None
        if self._warmup is not None:
            with contextlib.suppress(Gone):  # logged; the store is asked here instead
                index = self._warmup.index(self._wait_s)
        if index is None:
            index = self._store.list_index()
        return [[kind, key, digests] for (kind, key), digests in index.items()]

    def _find_snapshot(self, tag: str) -> list[str]:
        """[digest] of the snapshot now in the node cache, [] if there is none."""
        if self._warmup is not None:
            with contextlib.suppress(Gone):
                digest = self._warmup.snapshot(self._wait_s)
                return [digest] if digest is not None else []
        payload = self._store.get_snapshot(tag)  # kept in the node cache as it is fetched
        return [sealed.digest_of(payload)] if payload is not None else []
