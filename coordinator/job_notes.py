"""What one process of a node asks the store for the job, left as a note for the others.

A node of 8 ranks would otherwise list a large store 8 times at once, and 1,000 ranks
throttle a bucket. Notes are named by the job's token and the store's URL, so a later
job on the node asks again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from storage.node_cache import NodeCache

log = logging.getLogger(__name__)

JOB_NOTE, JOB_NOTE_KEPT_S = "job-", 3600.0  # kept an hour
LEADER_POLL_S = 0.01


class JobNotes:
    """Once per node and job: `once` by whichever process comes first, `from_leader` by
    the node's first local rank (where the others must not ask the store themselves)."""

    def __init__(self, node: NodeCache | None, token: Callable[[], str | None],
                 url: str) -> None:
        self._node = node
        self._token = token
        self._url = url

    def once(self, what: str, listing: Callable[[], list[Any]], *,
             share_empty: bool = True) -> list[Any]:
        """`listing()` run by one process of the node for the job (`what` names it), the
        others reading the note it left. Without `share_empty` an empty answer (maybe an
        outage) is not left: without it the node's every lookup would miss."""
        note = self._name(what)
        node = self._node
        if note is None or node is None:
            return listing()
        with node.lock(note, f"the listing of {_label(what)}"):
            if (found := self._read(note)) is not None:
                return found
            listed = listing()
            if listed or share_empty:
                node.leave_note(note, json.dumps(listed).encode())
            return listed

    def from_leader(self, what: str, listing: Callable[[], list[Any]], *, leader: bool,
                    wait_s: float) -> list[Any]:
        """As `once`, but the `leader` (the node's first local rank) answers: the others
        wait up to `wait_s` for its note, then ask the store themselves."""
        note = self._name(what)
        if leader or note is None or self._node is None:
            return self.once(what, listing)
        deadline = time.monotonic() + wait_s
        while (found := self._read(note)) is None:
            if time.monotonic() > deadline:
                log.warning("the node's first rank left no %s within %.0f s; asking the "
                            "store here", _label(what), wait_s)
                return self.once(what, listing)
            time.sleep(LEADER_POLL_S)
        return found

    def forget_old(self) -> None:
        """Notes older than an hour: past jobs', which nobody reads again."""
        if self._node is not None:
            self._node.forget_notes(JOB_NOTE, JOB_NOTE_KEPT_S)

    def _name(self, what: str) -> str | None:
        token = self._token() if self._node is not None else None
        if token is None:
            return None
        return JOB_NOTE + hashlib.sha256(f"{token}\0{self._url}\0{what}".encode()).hexdigest()

    def _read(self, note: str) -> list[Any] | None:
        assert self._node is not None
        with contextlib.suppress(ValueError):  # a damaged note: ask again
            if (found := self._node.note(note)) is not None and isinstance(
                    listed := json.loads(found), list):
                return listed
        return None


def _label(what: str) -> str:
    """What a note holds, for a log line: "" is the index, else "<kind>\0<key>"."""
    return what.replace("\0", " ") or "index"
