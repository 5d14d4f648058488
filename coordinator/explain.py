"""Why this rank compiled: each miss compared with what the store held when the job began.

PyTorch hands us every cache key it computes with its components (compat); a published
key's components go beside its entries. On a miss a background thread finds the reason:

- "guards rejected stored variants": the key was stored, its guards did not hold here;
- "differs in: ...": the nearest stored key of the same kind, component by component;
- "environment differs": nothing of this kind under this fingerprint, but the store holds
  entries of other environments (torch, Triton, CUDA, GPU): the nearest one's fields;
- "new graph": the store held nothing of this kind at all.
"""

from __future__ import annotations

import logging

from coordinator import compat
from coordinator.background import Background
from coordinator.stats import RankStats
from storage import explain
from storage.api import Store

log = logging.getLogger(__name__)

MAX_CANDIDATES = 256  # stored keys compared per kind (their components are read once)
REJECTED = "guards rejected stored variants"
ENVIRONMENT = "environment differs"
UNEXPLAINED = "unexplained"


class Explainer:
    """Keeps key components, publishes them with entries, and explains misses off-thread."""

    def __init__(self, store: Store, stats: RankStats, environment: dict[str, str],
                 fingerprint: str) -> None:
        self._store = store
        self._stats = stats
        self._environment = environment
        self._fingerprint = fingerprint
        self._computed: dict[tuple[str, str], compat.KeyComponents] = {}  # (kind, local key)
        self._stored: dict[tuple[str, str], int] | None = None  # start-up index: variants
        self._stored_keys: dict[str, str] = {}  # kind -> its stored keys, one per line
        self._stored_components: dict[tuple[str, str], compat.KeyComponents | None] = {}
        self._environments: dict[str, dict[str, str]] | None = None
        self._done: set[tuple[str, str]] = set()
        self._described = False
        self._background = Background("pt2cc-explain")

    # -- fed by compat and Artifacts -------------------------------------------------------

    def computed(self, kind: str, local_key: str, components: compat.KeyComponents) -> None:
        self._computed[(kind, local_key)] = components

    def wants_lines(self, kind: str, local_key: str) -> bool:
        """Whether a key's components are worth computing: not for a key the store held
        at start-up (it hits, or misses on guards, which needs no components)."""
        # One substring search per lookup (a remote key embeds the local one), not a scan
        # of the index in Python: AOTAutograd asks once per key it computes.
        return self._stored is None or local_key not in self._stored_keys.get(kind, "")

    def index_listed(self, listed: dict[tuple[str, str], list[str]]) -> None:
        """The store's index as the job found it: what a miss is compared with."""
        keys: dict[str, list[str]] = {}
        for kind, key in listed:
            keys.setdefault(kind, []).append(key)
        self._stored_keys = {kind: "\n".join(ks) for kind, ks in keys.items()}
        self._stored = {k: len(v) for k, v in listed.items()}  # last: wants_lines reads both

    def published(self, kind: str, key: str) -> None:
        """After a publish: keep the key's components beside it (and say once what this
        store's fingerprint stands for), on a thread of our own: no rank waits for them,
        so the compile thread (and the ranks waiting for its release) should not."""
        self._background.submit(f"keeping the components of {kind} {key}",
                                self._keep_components, kind, key)

    def missed(self, kind: str, key: str) -> None:
        """PyTorch compiles `key`: find out why, on a thread of our own."""
        if (kind, key) in self._done:
            return
        self._done.add((kind, key))
        self._background.submit(f"explaining the miss of {kind} {key}", self._explain_miss,
                                kind, key, compat.current_compile_id())

    def drain(self, timeout_s: float) -> None:
        """Wait (at exit) for the reasons and components still being worked out."""
        if left := self._background.drain(timeout_s):
            log.info("%d miss reasons or key components still pending after %.0f s", left,
                     timeout_s)

    # -- internals -----------------------------------------------------------------------

    def _keep_components(self, kind: str, key: str) -> None:
        components = self._components(kind, key)  # a scan of the computed keys
        if not components:
            return
        if not self._described:  # once; only the background thread gets here
            self._store.describe_environment(self._environment)
            self._described = True
        self._store.put_components(kind, key, components)

    def _explain_miss(self, kind: str, key: str, compile_id: str | None) -> None:
        with self._stats.phase("explain", key=key):
            group, reason = self.explain(kind, key)
        self._stats.miss(kind, key, group, reason, compile_id)
        log.debug("%s %s (compile %s) missed: %s", kind, key, compile_id, reason)

    def explain(self, kind: str, key: str) -> tuple[str, str]:
        """(the group misses are counted by, the reason in full)."""
        stored = self._stored or {}
        if stored.get((kind, key)):
            n = stored[(kind, key)]
            return REJECTED, f"{REJECTED}: {n} stored, none fit this rank's inputs"
        ours = self._components(kind, key)
        if not ours:
            return UNEXPLAINED, f"{UNEXPLAINED}: PyTorch gave no key components"
        same_kind = [k for (kd, k) in stored if kd == kind and k != key][:MAX_CANDIDATES]
        if same_kind:
            candidates = [(k, c) for k in same_kind if (c := self._stored_of(kind, k))]
            best = explain.nearest(ours, candidates)
            if best is None:
                return UNEXPLAINED, (f"{UNEXPLAINED}: the store's {kind} entries carry no key "
                                     "components (published by an earlier release)")
            nearest_key, diff = best
            stored_components = dict(candidates)[nearest_key]
            return explain.describe(diff, ours, stored_components)
        return self._explain_environment(kind)

    def _explain_environment(self, kind: str) -> tuple[str, str]:
        if self._environments is None:
            self._environments = self._store.environments()
        others = [(fp, fields) for fp, fields in self._environments.items()
                  if fp != self._fingerprint]
        if not others:
            return explain.NEW_GRAPH, f"{explain.NEW_GRAPH}: the store held no {kind} entries"
        diffs = min((explain.environment_differences(self._environment, fields)
                     for _, fields in others), key=len)
        return ENVIRONMENT, (f"{ENVIRONMENT}: no {kind} entries for this environment; the "
                             f"nearest stored one differs in: {', '.join(diffs) or 'nothing'}")

    def _components(self, kind: str, key: str) -> compat.KeyComponents | None:
        """Our components of a key as PyTorch's remote cache names it (it adds a prefix)."""
        found = self._computed.get((kind, key))
        if found is None:
            found = next((c for (kd, local), c in list(self._computed.items())
                          if kd == kind and local in key), None)
        return found

    def _stored_of(self, kind: str, key: str) -> compat.KeyComponents | None:
        if (kind, key) not in self._stored_components:
            self._stored_components[(kind, key)] = self._store.get_components(kind, key)
        return self._stored_components[(kind, key)]
