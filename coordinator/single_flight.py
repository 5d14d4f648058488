"""One rank compiles a key, the others wait for it: claims on the job's c10d store.

A claim is an atomic `add` on the job's TCPStore (torchrun's agent's, or one rank 0 hosts
under other launchers), over our own client connection: it works before or without
`init_process_group` and never shares a connection with the user's process group. The
claimant publishes, then marks the key done; waiters poll with non-blocking `check` calls
(a blocking `wait` would hold the connection that a publishing thread needs). Every wait
has a deadline, and a claimant whose heartbeat stops moving is taken for dead, so a crash,
a compile error or a bypassed cache entry never holds anyone for long. Keys are scoped to
the job (torchrun's run id and restart count: a restarted group never waits on claims of
the group it replaced).
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
from datetime import timedelta
from typing import Any

from coordinator.topology import Topology

log = logging.getLogger(__name__)

LOG_EVERY_S = 5.0
# A waiter loads at most this long after the publish; three small store ops per poll.
MAX_POLL_S = 0.05


class WaitResult(enum.Enum):
    DONE = "done"  # the claimant published (or gave up): look in the store
    DEADLINE = "deadline"  # waited wait_timeout_s
    CLAIMANT_DEAD = "claimant-dead"  # its heartbeat stopped


def connect_job_store(timeout_s: float, topo: Topology) -> tuple[Any | None, str]:
    """A client of the job's c10d store and how it was reached, or None and why not.

    Under torchrun the agent hosts the store. Under another launcher (srun, mpirun, ...)
    rank 0 hosts it at MASTER_ADDR:MASTER_PORT as a multi-tenant TCPStore, the kind
    `init_process_group("env://")` creates there: the user's process group later shares
    rank 0's server instead of failing to bind the port, and claims work from the first
    compile on, before any process group exists.
    """
    if topo.problem is not None:
        log.warning("inconsistent launcher environment (%s); every rank compiles for itself",
                    topo.problem)
        return None, f"off: {topo.problem}"
    if topo.world_size <= 1:
        return None, "off: a job of one process"
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not addr or not port:
        log.warning("%d ranks but no MASTER_ADDR/MASTER_PORT to meet at; every rank compiles "
                    "for itself", topo.world_size)
        return None, "off: no MASTER_ADDR/MASTER_PORT"
    import torch.distributed as dist

    host = topo.rank == 0 and not topo.agent
    try:
        store = dist.TCPStore(addr, int(port), is_master=host, multi_tenant=host,
                              timeout=timedelta(seconds=timeout_s), wait_for_workers=False)
    except Exception as exc:  # noqa: BLE001 - no coordination is better than no job
        log.warning("cannot %s the job's c10d store at %s:%s (%s); every rank compiles for "
                    "itself", "host" if host else "reach", addr, port, exc)
        return None, f"off: c10d store at {addr}:{port} failed"
    if topo.agent:
        scope = "{}/{}".format(os.environ["TORCHELASTIC_RUN_ID"],
                               os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        how = f"torchrun's c10d store at {addr}:{port}"
    else:
        scope = "{}/0".format(os.environ.get("SLURM_JOB_ID") or os.environ.get(
            "OMPI_COMM_WORLD_JOBID") or "job")
        how = f"a c10d store rank 0 hosts at {addr}:{port} ({topo.launcher})"
    return dist.PrefixStore(f"pt2cc/{scope}/", store), how


class SingleFlight:
    """Claims and waits for one process; `store=None` (no torchrun) grants every claim."""

    def __init__(self, store: Any | None, rank: int, *, wait_timeout_s: float,
                 stale_after_s: float, heartbeat_s: float) -> None:
        self._store = store
        self._rank = rank
        self._wait_timeout_s = wait_timeout_s
        self._stale_after_s = stale_after_s
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.waits = 0
        self.waited_s = 0.0
        if store is not None:
            threading.Thread(target=self._beat, args=(heartbeat_s,), name="pt2cc-heartbeat",
                             daemon=True).start()

    @property
    def coordinated(self) -> bool:
        return self._store is not None

    def claim(self, kind: str, key: str) -> bool:
        """True when this rank should compile `key` (it now holds the claim)."""
        name = f"{kind}/{key}"
        with self._lock:
            if name in self._held:  # the same key looked up again: never wait on ourselves
                return True
        if self._store is None:
            return True
        try:
            first = self._store.add(f"claim/{name}", 1) == 1
            if first:
                self._store.set(f"owner/{name}", str(self._rank))
        except Exception as exc:  # noqa: BLE001
            log.warning("c10d store failed while claiming %s (%s); compiling locally", name, exc)
            return True
        if first:
            with self._lock:
                self._held.add(name)
        return first

    def finish(self, kind: str, key: str) -> None:
        """Mark a held claim done (published or not) so waiters stop waiting."""
        name = f"{kind}/{key}"
        with self._lock:
            if name not in self._held:
                return
            self._held.discard(name)
        self._mark_done(name)

    def finish_all(self) -> None:
        """Release every claim still held: the compile that would have published them ended."""
        with self._lock:
            names, self._held = list(self._held), set()
        for name in names:
            log.debug("releasing unpublished claim on %s", name)
            self._mark_done(name)

    def is_done(self, kind: str, key: str) -> bool:
        """Whether the claimant of `key` is done already (one store operation, no wait)."""
        if self._store is None:
            return False
        try:
            return bool(self._store.check([f"done/{kind}/{key}"]))
        except Exception as exc:  # noqa: BLE001
            log.warning("c10d store failed while checking %s %s (%s)", kind, key, exc)
            return False

    def wait(self, kind: str, key: str) -> WaitResult:
        """Block until the claimant of `key` is done, dead, or the deadline passes."""
        assert self._store is not None
        name = f"{kind}/{key}"
        start = time.monotonic()
        deadline = start + self._wait_timeout_s
        owner: str | None = None
        beat, beat_seen_at = -1, start
        next_log, poll = start + LOG_EVERY_S, 0.01
        self.waits += 1
        try:
            while True:
                now = time.monotonic()
                if self._store.check([f"done/{name}"]):
                    return WaitResult.DONE
                if owner is None and self._store.check([f"owner/{name}"]):
                    owner = self._store.get(f"owner/{name}").decode()
                current = int(self._store.add(f"hb/{owner}", 0)) if owner is not None else beat
                if current != beat:
                    beat, beat_seen_at = current, now
                if now - beat_seen_at > self._stale_after_s:
                    who = f"rank {owner}" if owner is not None else "an unknown rank"
                    log.warning("%s's claim on %s %s: no heartbeat for %.0f s; compiling locally",
                                who, kind, _short(key), now - beat_seen_at)
                    return WaitResult.CLAIMANT_DEAD
                if now >= deadline:
                    log.warning("waited %.0f s (the deadline) for rank %s to compile %s %s; "
                                "compiling locally", now - start, owner, kind, _short(key))
                    return WaitResult.DEADLINE
                if now >= next_log:
                    log.info("waiting for rank %s to compile %s %s (%.0f s so far)",
                             owner if owner is not None else "?", kind, _short(key), now - start)
                    next_log = now + LOG_EVERY_S
                time.sleep(poll)
                poll = min(poll * 1.5, MAX_POLL_S)
        except Exception as exc:  # noqa: BLE001 - a broken store must not hang the job
            log.warning("c10d store failed while waiting for %s (%s); compiling locally", name, exc)
            return WaitResult.CLAIMANT_DEAD
        finally:
            self.waited_s += time.monotonic() - start

    def close(self) -> None:
        self._stop.set()
        self.finish_all()

    def _mark_done(self, name: str) -> None:
        if self._store is None:
            return
        try:
            self._store.set(f"done/{name}", str(self._rank))
        except Exception as exc:  # noqa: BLE001 - waiters fall back on the heartbeat
            log.warning("c10d store failed while releasing %s (%s)", name, exc)

    def _beat(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                self._store.add(f"hb/{self._rank}", 1)  # type: ignore[union-attr]
            except Exception as exc:  # noqa: BLE001 - any failure of the job store ends it
                log.warning("heartbeat stopped: the job's c10d store failed (%s); ranks "
                            "waiting on this rank's compiles will compile themselves", exc)
                return


def _short(key: str) -> str:
    """`pt2:fx-graph-v1::fabc…:c1` -> `fabc…` (the readable, distinguishing part)."""
    core = key.split("::", 1)[-1].rsplit(":", 1)[0] if "::" in key else key
    return core if len(core) <= 16 else core[:16] + "…"
