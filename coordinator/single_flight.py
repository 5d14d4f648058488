"""One rank compiles a key, the others wait for it: claims on the job's c10d store.

A claim is an atomic `add` on the job's TCPStore (torchrun's agent's, or one rank 0 hosts
under other launchers), over our own client connections: it works before or without
`init_process_group` and never shares a connection with the user's process group.

The job store's load grows with nodes, not ranks: on each node the first rank to miss a
key takes a node lock (an `flock` in the node cache dir) and alone deals with the job
store; the node's other ranks wait for that lock, which costs the job store nothing and
is released the moment the claimant publishes (or the node's representative has loaded,
or either process died). A representative waits with a blocking `wait` on a connection
of its own (a wait holds its connection: the heartbeat and publishing use the other),
waking at once when the claimant marks the key done, and every `stale_after_s / 2` to
check the claimant's heartbeat. Claimants beat only while they hold a claim. Every wait
has a deadline. Keys are scoped to the job (torchrun's run id and restart count: a
restarted group never waits on claims of the group it replaced). A done mark names the
variant the claimant published or found, and whoever releases a node lock leaves that
name in the lock's file: waiters take that variant without listing the store.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import fcntl
import hashlib
import logging
import os
import threading
import time
import uuid
from datetime import timedelta
from typing import IO, Any, NamedTuple

from coordinator.topology import Topology

log = logging.getLogger(__name__)

LOG_EVERY_S = 5.0


class WaitResult(enum.Enum):
    DONE = "done"  # the claimant published (or gave up)
    DEADLINE = "deadline"  # waited wait_timeout_s
    CLAIMANT_DEAD = "claimant-dead"  # its heartbeat stopped


class Waited(NamedTuple):
    """How a wait ended, and the stored variant (its digest) the claimant published or
    loaded, when it had one: the waiter takes it without listing the store."""

    result: WaitResult
    variant: str | None = None


@dataclasses.dataclass
class JobStore:
    """Two client connections to the job's c10d store: a blocking wait holds its own."""

    main: Any  # claims, done marks, heartbeats
    waits: Any  # blocking waits only


def connect_job_store(timeout_s: float, topo: Topology) -> tuple[JobStore | None, str]:
    """Connections to the job's c10d store and how it was reached, or None and why not.

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
    timeout = timedelta(seconds=timeout_s)
    try:
        main = dist.TCPStore(addr, int(port), is_master=host, multi_tenant=host,
                             timeout=timeout, wait_for_workers=False)
        waits = dist.TCPStore(addr, int(port), is_master=False, timeout=timeout,
                              wait_for_workers=False)
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
    prefix = f"pt2cc/{scope}/"
    return JobStore(dist.PrefixStore(prefix, main), dist.PrefixStore(prefix, waits)), how


class NodeLock:
    """An exclusive `flock` on one file: held by at most one process of the node."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._file: IO[str] | None = None

    def try_acquire(self) -> bool:
        try:
            f = open(self._path, "a")  # noqa: SIM115 - held until release()
        except OSError:
            return True  # no usable node dir: every rank deals with the job store
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return False
        self._file = f
        return True

    def wait_free(self, freed: threading.Event, left: list[str]) -> None:
        """Block until no process holds the lock, then append what the last holder left
        to `left` and set `freed` (the lock is not kept).

        A shared lock: every waiter of the node gets it at once when the holder lets go,
        instead of one after another."""
        try:
            with open(self._path, "a+") as f:
                fcntl.flock(f, fcntl.LOCK_SH)
                f.seek(0)
                left.append(f.read().strip())
                fcntl.flock(f, fcntl.LOCK_UN)
        except OSError:
            pass  # no usable node dir: nothing to wait for
        freed.set()

    def release(self, note: str | None = None) -> None:
        """Let go, leaving `note` (or nothing) in the file for the processes that waited.

        A note left by an earlier job names a variant of the same key: never wrong, only
        perhaps not the newest."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.truncate(0)
                self._file.write(note or "")
                self._file.flush()
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class SingleFlight:
    """Claims and waits for one process; `job=None` (no peers) grants every claim."""

    def __init__(self, job: JobStore | None, rank: int, *, wait_timeout_s: float,
                 stale_after_s: float, heartbeat_s: float, node_dir: str | None = None) -> None:
        self._job = job
        self._rank = rank
        self._wait_timeout_s = wait_timeout_s
        self._stale_after_s = stale_after_s
        self._node_dir = os.path.join(node_dir, ".claims") if node_dir else None
        if self._node_dir:
            with contextlib.suppress(OSError):
                os.makedirs(self._node_dir, exist_ok=True)
        self._held: dict[str, str | None] = {}  # claims held -> the variant for the waiters
        self._handed_over: set[str] = set()  # held claims a publish thread will finish
        self._node_locks: dict[str, NodeLock] = {}  # keys this process stands for on the node
        self._node_waits: set[str] = set()  # keys another process of the node stands for
        self._token: str | None = None  # the job's name, once known
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beating = threading.Event()
        self.waits = 0
        self.waited_s = 0.0
        self.job_store_ops = 0
        self.job_store_keys = 0  # keys this process claimed on the job store for its node
        if job is not None:
            threading.Thread(target=self._beat, args=(heartbeat_s,), name="pt2cc-heartbeat",
                             daemon=True).start()

    @property
    def coordinated(self) -> bool:
        return self._job is not None

    @property
    def job(self) -> JobStore | None:
        """The job store's connections (the end-of-job report travels over them too)."""
        return self._job

    def job_token(self) -> str | None:
        """A name every rank of this job shares and no other job has (the first rank's
        proposal, one atomic compare-and-set); None without a job store."""
        if self._job is None or self._token is not None:
            return self._token
        try:
            token = self._op(self._job.main.compare_set, "token", "", uuid.uuid4().hex)
        except Exception as exc:  # noqa: BLE001
            log.debug("c10d store failed while naming the job (%s)", exc)
            return None
        self._token = token.decode() if isinstance(token, bytes) else str(token)
        return self._token

    def claim(self, kind: str, key: str) -> bool:
        """True when this rank should compile `key` (it now holds the claim)."""
        name = f"{kind}/{key}"
        with self._lock:
            if name in self._held:  # the same key looked up again: never wait on ourselves
                return True
        if self._job is None:
            return True
        node_lock = self._node_lock(name)
        if node_lock is not None and not node_lock.try_acquire():
            with self._lock:
                self._node_waits.add(name)
            return False
        self.job_store_keys += 1
        try:
            first = self._op(self._job.main.add, f"claim/{name}", 1) == 1
            if first:
                self._op(self._job.main.set, f"owner/{name}", str(self._rank))
        except Exception as exc:  # noqa: BLE001
            log.warning("c10d store failed while claiming %s (%s); compiling locally", name, exc)
            first = True
        with self._lock:
            if node_lock is not None:
                self._node_locks[name] = node_lock
            if first:
                self._held[name] = None
                self._beating.set()
        return first

    def holds(self, kind: str, key: str) -> bool:
        """Whether this rank holds the claim on `key` (its waiters take what it publishes)."""
        with self._lock:
            return f"{kind}/{key}" in self._held

    def note_variant(self, kind: str, key: str, digest: str) -> None:
        """A held claim's key has this stored variant (found after claiming): the waiters
        take it unless this rank publishes another."""
        name = f"{kind}/{key}"
        with self._lock:
            if name in self._held:
                self._held[name] = digest

    def let_node_in(self, kind: str, key: str, variant: str) -> None:
        """The node's other processes may take `variant` now (it is in the node cache);
        the job's other nodes wait for `finish`, once it is in the store."""
        self._release_node_lock(f"{kind}/{key}", variant)

    def hand_over(self, kind: str, key: str) -> bool:
        """A held claim's entry is being published on another thread: the claim outlives
        the compile (`finish_all` leaves it) until that thread calls `finish`. False when
        this rank holds no claim on `key`."""
        name = f"{kind}/{key}"
        with self._lock:
            if name not in self._held:
                return False
            self._handed_over.add(name)
            return True

    def finish(self, kind: str, key: str, variant: str | None = None) -> None:
        """Mark a held claim done so waiters stop waiting; `variant` is what was published
        (None: nothing, or the publish failed)."""
        name = f"{kind}/{key}"
        with self._lock:
            if name not in self._held:
                return
            noted = self._held.pop(name)
            self._handed_over.discard(name)
        self._mark_done(name, variant or noted)

    def finish_all(self) -> None:
        """Release every claim still held but not handed over: the compile that would have
        published them ended."""
        with self._lock:
            held = {n: v for n, v in self._held.items() if n not in self._handed_over}
            for name in held:
                del self._held[name]
        for name, noted in held.items():
            log.debug("releasing unpublished claim on %s", name)
            self._mark_done(name, noted)

    def finished(self, kind: str, key: str) -> Waited | None:
        """The claimant of `key` is done already: with its variant (no wait); None if not."""
        if self._job is None:
            return None
        name = f"{kind}/{key}"
        try:
            if not self._op(self._job.main.check, [f"done/{name}"]):
                return None
            return Waited(WaitResult.DONE, self._done_variant(name))
        except Exception as exc:  # noqa: BLE001
            log.warning("c10d store failed while checking %s %s (%s)", kind, key, exc)
            return None

    def first_to_publish(self, kind: str, key: str, variant: str) -> bool:
        """Whether this rank is the job's first to publish this variant of `key` (an
        identity of its own choosing, such as a hash of the guards): ranks that build an
        unclaimed entry at once would otherwise each store a byte-different duplicate."""
        if self._job is None:
            return True
        try:
            return self._op(self._job.main.add, f"pub/{kind}/{key}/{variant}", 1) == 1
        except Exception as exc:  # noqa: BLE001 - a duplicate is better than a loss
            log.debug("c10d store failed while deduplicating %s %s (%s)", kind, key, exc)
            return True

    def note_published(self, kind: str, key: str, variant: str, digest: str) -> None:
        """This rank, the job's first to publish `variant` of `key`, stored it as `digest`:
        the job's others that built it too can name their copy by it (`published_as`)."""
        if self._job is None:
            return
        try:
            self._op(self._job.main.set, f"pubd/{kind}/{key}/{variant}", digest)
        except Exception as exc:  # noqa: BLE001 - only a snapshot's manifest misses it
            log.debug("c10d store failed while noting %s %s (%s)", kind, key, exc)

    def published_as(self, kind: str, key: str, variant: str) -> str | None:
        """The digest another rank stored `variant` of `key` under; None if not (yet)."""
        if self._job is None:
            return None
        name = f"pubd/{kind}/{key}/{variant}"
        try:
            if not self._op(self._job.main.check, [name]):
                return None
            return bytes(self._op(self._job.main.get, name)).decode()
        except Exception as exc:  # noqa: BLE001
            log.debug("c10d store failed while reading %s %s (%s)", kind, key, exc)
            return None

    def wait(self, kind: str, key: str, compile_id: str | None = None) -> Waited:
        """Block until the claimant of `key` is done, dead, or the deadline passes;
        `compile_id` (Dynamo's) names the compile in the log lines."""
        assert self._job is not None
        name = f"{kind}/{key}"
        what = f"{kind} {_short(key)}" + (f" (compile {compile_id})" if compile_id else "")
        start = time.monotonic()
        self.waits += 1
        waited = Waited(WaitResult.DEADLINE)
        try:
            with self._lock:
                on_node = name in self._node_waits
                self._node_waits.discard(name)
            if on_node:
                waited = self._wait_on_node(name, what, start)
            else:
                waited = self._wait_on_job(name, what, start)
            return waited
        finally:
            # The node's other waiters read the variant from the lock's file.
            self._release_node_lock(name, waited.variant)
            self.waited_s += time.monotonic() - start

    def close(self) -> None:
        """Release every claim, those handed over too (their publish did not end in time)."""
        self._stop.set()
        with self._lock:
            self._handed_over.clear()
        self.finish_all()

    # -- internals -----------------------------------------------------------------------

    def _node_lock(self, name: str) -> NodeLock | None:
        if self._node_dir is None:
            return None
        digest = hashlib.sha256(name.encode()).hexdigest()[:40]
        return NodeLock(os.path.join(self._node_dir, digest))

    def _release_node_lock(self, name: str, variant: str | None) -> None:
        with self._lock:
            node_lock = self._node_locks.pop(name, None)
        if node_lock is not None:
            node_lock.release(variant)

    def _done_variant(self, name: str) -> str | None:
        """The variant a done mark names: "<rank> <digest>" (or "<rank>", "dead:<rank>")."""
        assert self._job is not None
        parts = self._op(self._job.main.get, f"done/{name}").decode().split()
        return parts[1] if len(parts) == 2 else None

    def _wait_on_node(self, name: str, what: str, start: float) -> Waited:
        """Another process of this node deals with the job store: wait for its lock.

        A thread blocks in `flock` until the holder lets go (it takes the lock shared and
        gives it back at once), so a waiter costs no CPU and wakes the moment the lock is
        free; this thread only keeps the deadline and the log.
        """
        node_lock = self._node_lock(name)
        assert node_lock is not None
        freed, left = threading.Event(), []
        threading.Thread(target=node_lock.wait_free, args=(freed, left), name="pt2cc-node-wait",
                         daemon=True).start()
        deadline, next_log = start + self._wait_timeout_s, start + LOG_EVERY_S
        while not freed.wait(max(0.0, min(next_log, deadline) - time.monotonic())):
            now = time.monotonic()
            if now >= deadline:
                log.warning("waited %.0f s (the deadline) for another rank of this node on "
                            "%s; compiling locally", now - start, what)
                return Waited(WaitResult.DEADLINE)
            if now >= next_log:
                log.info("waiting for another rank of this node on %s (%.0f s so far)",
                         what, now - start)
                next_log = now + LOG_EVERY_S
        # That process published, loaded, or died; it left the variant it had, if any.
        return Waited(WaitResult.DONE, left[0] if left and left[0] else None)

    def _wait_on_job(self, name: str, what: str, start: float) -> Waited:
        """This node's representative: one blocking wait for the claimant's done mark (on a
        thread, over the waits connection) while this thread checks the claimant's
        heartbeat every stale_after_s / 4. A claimant found dead gets its key marked done,
        which wakes every waiter of the job."""
        assert self._job is not None
        deadline, next_log = start + self._wait_timeout_s, start + LOG_EVERY_S
        done = self._wait_in_background(f"done/{name}", deadline - start + 1.0)
        owner: str | None = None
        beat, beat_seen_at = -1, start
        main = self._job.main
        try:
            while not done.wait(max(0.05, min(self._stale_after_s / 4,
                                              deadline - time.monotonic()))):
                now = time.monotonic()
                if owner is None and self._op(main.check, [f"owner/{name}"]):
                    owner = self._op(main.get, f"owner/{name}").decode()
                current = int(self._op(main.add, f"hb/{owner}", 0)) if owner else beat
                if current != beat:
                    beat, beat_seen_at = current, now
                if now - beat_seen_at > self._stale_after_s:
                    who = f"rank {owner}" if owner is not None else "an unknown rank"
                    log.warning("%s's claim on %s: no heartbeat for %.0f s; compiling locally",
                                who, what, now - beat_seen_at)
                    self._op(main.set, f"done/{name}", f"dead:{owner}")
                    return Waited(WaitResult.CLAIMANT_DEAD)
                if now >= deadline:
                    log.warning("waited %.0f s (the deadline) for rank %s to compile %s; "
                                "compiling locally", now - start, owner, what)
                    return Waited(WaitResult.DEADLINE)
                if now >= next_log:
                    log.info("waiting for rank %s to compile %s (%.0f s so far)",
                             owner if owner is not None else "?", what, now - start)
                    next_log = now + LOG_EVERY_S
            return Waited(WaitResult.DONE, self._done_variant(name))
        except Exception as exc:  # noqa: BLE001 - a broken store must not hang the job
            log.warning("c10d store failed while waiting for %s (%s); compiling locally", name, exc)
            return Waited(WaitResult.CLAIMANT_DEAD)

    def _wait_in_background(self, key: str, timeout_s: float) -> threading.Event:
        """An event set once `key` is set: one blocking `wait` on the waits connection."""
        assert self._job is not None
        done = threading.Event()
        waits = self._job.waits

        def block() -> None:
            with contextlib.suppress(RuntimeError):  # the deadline passed: the caller knows
                self._op(waits.wait, [key], timedelta(seconds=timeout_s))
                done.set()

        threading.Thread(target=block, name="pt2cc-wait", daemon=True).start()
        return done

    def _mark_done(self, name: str, variant: str | None) -> None:
        if self._job is not None:
            mark = f"{self._rank} {variant}" if variant else str(self._rank)
            try:
                self._op(self._job.main.set, f"done/{name}", mark)
            except Exception as exc:  # noqa: BLE001 - waiters fall back on the heartbeat
                log.warning("c10d store failed while releasing %s (%s)", name, exc)
        self._release_node_lock(name, variant)
        with self._lock:
            if not self._held:
                self._beating.clear()

    def _op(self, fn: Any, *args: Any) -> Any:
        self.job_store_ops += 1
        return fn(*args)

    def _beat(self, every_s: float) -> None:
        """Beat while this rank holds a claim: waiters take a silent claimant for dead."""
        while not self._stop.wait(every_s):
            if not self._beating.is_set():
                continue
            try:
                self._op(self._job.main.add, f"hb/{self._rank}", 1)  # type: ignore[union-attr]
            except Exception as exc:  # noqa: BLE001 - any failure of the job store ends it
                log.warning("heartbeat stopped: the job's c10d store failed (%s); ranks "
                            "waiting on this rank's compiles will compile themselves", exc)
                return


def _short(key: str) -> str:
    """`pt2:fx-graph-v1::fabc…:c1` -> `fabc…` (the readable, distinguishing part)."""
    core = key.split("::", 1)[-1].rsplit(":", 1)[0] if "::" in key else key
    return core if len(core) <= 16 else core[:16] + "…"
