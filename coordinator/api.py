"""`install()`: the one call that puts a process under the coordinator."""

from __future__ import annotations

import atexit
import logging
import os
import stat
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from coordinator import compat, fingerprint, report, topology
from coordinator import log as rank_log
from coordinator.artifacts import Artifacts
from coordinator.config import Config
from coordinator.errors import ConfigError
from coordinator.explain import Explainer
from coordinator.kernels import KernelFiles
from coordinator.single_flight import SingleFlight, connect_job_store
from coordinator.snapshot import Snapshots, derive_tag
from coordinator.stats import RankStats
from coordinator.trace import Trace
from storage import ArtifactStore, PreparedStore, explain, summary
from storage.api import Store
from storage.fail_open import FailOpenStore

log = logging.getLogger(__name__)

EXPLAIN_WAIT_S = 5.0  # at exit, for miss reasons still being worked out

_lock = threading.Lock()
_active: _Installation | None = None


class _Installation:
    def __init__(self, config: Config, store: FailOpenStore, flight: SingleFlight,
                 stats: RankStats, snapshots: Snapshots | None, artifacts: Artifacts,
                 explainer: Explainer, undo: Callable[[], None]) -> None:
        self.config, self.store, self.flight, self.stats = config, store, flight, stats
        self.snapshots, self.artifacts, self.explainer, self._undo = (
            snapshots, artifacts, explainer, undo)

    def report(self) -> dict:
        """This rank's summary line and files; on rank 0, the job's summary too."""
        self.artifacts.drain(self.config.store_timeout_s * 2)
        if self.snapshots is not None:
            self.snapshots.publish()
        self.explainer.drain(EXPLAIN_WAIT_S)
        snap = self.stats.as_dict(flight=self.flight, store=self.store)
        log.info("%s", RankStats.summary_line(snap))
        stats_file, trace_dir = self.config.stats_file, self.config.trace
        if stats_file:
            _best_effort(f"writing stats to {stats_file}", RankStats.write, stats_file, snap)
        if trace_dir and self.stats.trace is not None:
            _best_effort(f"writing the trace to {trace_dir}", self.stats.trace.write, trace_dir)
        topo = topology.this_process()
        used = self.artifacts.used_digests()
        if self.snapshots is not None and self.snapshots.loaded_digest:
            used.append(self.snapshots.loaded_digest)
        reports = report.exchange(self.flight.job, topo.rank, topo.world_size,
                                  {**snap, "used": used})
        if reports is not None:  # rank 0
            self._report_job(reports, topo.world_size)
        return snap

    def _report_job(self, reports: list[dict], world_size: int) -> None:
        log.info("%s", summary.text(summary.totals(reports, world_size)))
        if self.config.stats_file:
            _best_effort(f"writing the job's stats to {self.config.stats_file}.job.json",
                         report.write_job_file, self.config.stats_file, reports, world_size)
        if self.config.trace:
            report.merge_trace(self.config.trace)
        used = sorted({d for r in reports for d in r.get("used", ())})
        if used:
            self.store.record_use(report.job_id(), used)

    def close(self) -> None:
        if self.snapshots is not None:
            self.snapshots.cancel()
        self.flight.close()
        self._undo()


def _best_effort(what: str, fn: Callable[..., object], *args: object) -> None:
    """Files we write for the user never affect the job: one clear line if they fail."""
    try:
        fn(*args)
    except OSError as exc:
        log.warning("%s failed: %s", what, exc)


def install(cache: str | None = None, config: Config | None = None, **settings: Any) -> Config:
    """Route this process's torch.compile caches through the store at `cache`.

    `cache` is any fsspec URL or local path (default: PT2CC_CACHE, else a local directory).
    Settings are Config's fields; PT2CC_* variables fill in the rest. Call it before the
    first compile. Raises ConfigError (and StoreConfigError from storage) for bad input
    that needs no network to see; a store that refuses us (a missing bucket) or does not
    answer within twice PT2CC_STORE_TIMEOUT_S is logged, and every rank compiles.
    """
    global _active
    with _lock:
        if _active is not None:
            return _active.config
        if config is None:
            config = Config.from_env(cache_url=cache, **settings)
        elif cache is not None or settings:
            raise ConfigError("pass either a Config or cache/settings, not both")
        rank_log.setup(config.log_level)
        topo = topology.this_process()
        rank = topo.rank
        # Timed, to tell work moved before main() from work added: torch, which the script
        # imports first anyway, and Dynamo, which its first compile would import.
        started = time.perf_counter()
        import torch
        stats = RankStats(rank=rank, trace=_trace(config.trace, rank))
        stats.add_phase("torch_import", time.perf_counter() - started)
        with stats.phase("fingerprint"):  # initialises CUDA, as the script would later
            fields = fingerprint.describe()
        fp = fingerprint.fingerprint(fields)
        prepared = _prepare_store(config, fp)
        store = FailOpenStore(config.cache_url, lambda: _open_store(config, prepared, stats),
                              deadline_s=config.store_timeout_s * 2)
        # Not left to run beside the script: opening is mostly imports (s3fs, botocore),
        # CPU under the GIL, and beside the script's start it slowed compiles more than it
        # saved (README, design notes). A store slow to answer is left opening past this.
        store.wait_opened(config.store_timeout_s * 2)
        with stats.phase("job_store_connect"):
            job_store, how = connect_job_store(config.store_timeout_s, topo)
        tag = config.tag or derive_tag(sys.argv[0] or "python")
        if rank == 0:
            coordination = f"on through {how}" if job_store is not None else how
            log.info("store %s (%s); snapshot %s; in-job coordination %s", config.cache_url,
                     explain.environment_text(fields), repr(tag) if config.snapshot else "off",
                     coordination)
        flight = SingleFlight(
            job_store, rank, wait_timeout_s=config.wait_timeout_s,
            stale_after_s=config.stale_after_s, heartbeat_s=config.heartbeat_s,
            node_dir=config.node_cache_dir,
        )
        kernels = KernelFiles()
        entry_names: dict[str, str] = {}
        snapshots = None
        compile_stack = threading.Event()
        if config.snapshot:
            snapshots = Snapshots(
                store, tag, kernels,
                publisher=rank == 0, quiet_s=config.snapshot_quiet_s,
                compiled_count=lambda: (stats.published + stats.loaded + stats.materialized
                                        + kernels.built_count()),
                stats=stats, entry_names=entry_names, node=prepared.node_cache,
                compile_stack=compile_stack,
                # (`artifacts` exists before any snapshot is published)
                name_entries=lambda: artifacts.name_published_twins(),
            )
            snapshots.start_prefetch()
        explainer = Explainer(store, stats, fields, fp)
        artifacts = Artifacts(store, flight, kernels, stats, snapshots,
                              ready_wait_s=config.store_timeout_s * 2, entry_names=entry_names,
                              explainer=explainer, node=prepared.node_cache)
        artifacts.start_prefetch()
        # Imported after the prefetch has started: fetching, unpacking and writing the
        # snapshot's files (mostly without the GIL) go on while Dynamo and Inductor import.
        try:
            with stats.phase("dynamo_import"):  # as the first compile would
                import torch._dynamo  # noqa: F401
            with stats.phase("compile_workers_start"):  # as the first compile would, but
                compat.start_compile_workers()  # ready by the time it reaches a kernel
            from coordinator import hooks

            with stats.phase("hooks_install"):  # imports Inductor, as the first compile would
                undo = hooks.install(artifacts, explainer, kernels=kernels,
                                     ddp_graph_split=config.ddp_graph_split)
        finally:
            compile_stack.set()
        _active = _Installation(config, store, flight, stats, snapshots, artifacts, explainer,
                                undo)
        atexit.register(_at_exit)
        return config


def uninstall() -> dict | None:
    """Report, release every claim and undo every hook (tests; atexit does it otherwise)."""
    global _active
    with _lock:
        if _active is None:
            return None
        active, _active = _active, None
    snap = active.report()
    active.close()
    return snap


def _at_exit() -> None:
    try:
        uninstall()
    except Exception:
        log.exception("writing the coordinator's summary failed")


def _trace(directory: str | None, rank: int) -> Trace | None:
    """A trace for this rank, if asked for and its directory is usable (else one line)."""
    if not directory:
        return None
    try:
        os.makedirs(directory, exist_ok=True)
        if not os.access(directory, os.W_OK):
            raise PermissionError(f"{directory} is not writable")
    except OSError as exc:
        log.warning("trace directory %s is not usable (%s); no trace is written", directory,
                    exc)
        return None
    return Trace(rank)


def _others_can_write(store: ArtifactStore) -> bool:
    """A bucket may be shared by anyone with credentials; a directory says so in its mode."""
    from storage.location import is_local

    if not is_local(store.fs):
        return True
    try:
        return bool(os.stat(store.root).st_mode & (stat.S_IWGRP | stat.S_IWOTH))
    except OSError:
        return False


def _prepare_store(config: Config, fp: str) -> PreparedStore:
    """Bad input stops the launch here: what needs no network and no backend import."""
    from storage import prepare_store

    return prepare_store(
        config.cache_url, fingerprint=fp, node_cache_dir=config.node_cache_dir,
        node_cache_max_bytes=config.node_cache_max_bytes, timeout_s=config.store_timeout_s,
    )


def _open_store(config: Config, prepared: PreparedStore, stats: RankStats) -> Store | None:
    """On the store's own thread. A store that cannot be used leaves it off: no claims,
    every rank compiles for itself."""
    from storage import StoreConfigError, StoreUnavailable

    try:
        with stats.phase("store_open"):
            store = prepared.open()
    except StoreUnavailable as exc:
        log.warning("store %s is unavailable (%s); every rank compiles for itself",
                    config.cache_url, exc)
        return None
    except StoreConfigError as exc:
        log.error("store %s cannot be used: %s; every rank compiles for itself",
                  config.cache_url, exc)
        return None
    log.debug("store %s, fingerprint %s", config.cache_url, prepared.fingerprint)
    if rank_log.rank() == 0 and not store.signed and _others_can_write(store):
        log.warning("store %s is unsigned and others can write to it: its artifacts are "
                    "pickles, code that every rank runs. Set PT2CC_SIGNING_KEY or "
                    "PT2CC_SIGNING_KEY_FILE to refuse objects not written with your key",
                    config.cache_url)
    return store
