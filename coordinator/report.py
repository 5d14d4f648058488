"""The end of a job: every rank's stats reach rank 0 through the job store, which logs one
job summary, writes the job's stats file, merges the trace and records what the job used.

The job's c10d store carries the reports, never the user's process group: it may be gone,
or busy, at exit. Rank 0 waits at most REPORT_WAIT_S for the others, then reports the
ranks it has.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from datetime import timedelta
from typing import Any

from coordinator import trace as trace_files
from coordinator.single_flight import JobStore
from storage import summary

log = logging.getLogger(__name__)

REPORT_WAIT_S = 10.0


def exchange(job: JobStore | None, rank: int, world_size: int, snap: dict[str, Any],
             wait_s: float = REPORT_WAIT_S) -> list[dict[str, Any]] | None:
    """Post this rank's stats; on rank 0, every rank's that arrived within `wait_s`."""
    if job is None:
        return [snap] if rank == 0 else None
    try:
        job.main.set(f"report/{rank}", json.dumps(snap))
    except Exception as exc:  # noqa: BLE001 - rank 0 reports without this rank
        log.debug("posting this rank's stats failed: %s", exc)
        return None
    if rank != 0:
        return None
    keys = [f"report/{r}" for r in range(world_size)]
    try:  # on `main`: a wait on `waits` could queue behind a claim's wait still blocked there
        job.main.wait(keys, timedelta(seconds=wait_s))
    except Exception:  # noqa: BLE001 - the deadline: report the ranks that made it
        log.info("job summary: not every rank reported within %.0f s", wait_s)
    reports = []
    for key in keys:
        try:
            if job.main.check([key]):
                reports.append(json.loads(job.main.get(key)))
        except Exception as exc:  # noqa: BLE001
            log.debug("reading %s failed: %s", key, exc)
    return reports


def write_job_file(path: str, reports: list[dict[str, Any]], world_size: int) -> str:
    """`<path>.job.json`: every rank's stats and the totals."""
    target = f"{path}.job.json"
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    doc = {"world_size": world_size, "totals": summary.totals(reports, world_size),
           "ranks": sorted(reports, key=lambda r: r.get("rank", 0))}
    tmp = f"{target}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    os.replace(tmp, target)
    return target


def job_id() -> str:
    """A name for this job's record of use: when, and the launcher's job id if any."""
    launcher_id = (os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("SLURM_JOB_ID")
                   or os.environ.get("OMPI_COMM_WORLD_JOBID") or "")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return "-".join(p for p in (stamp, launcher_id[:40], uuid.uuid4().hex[:8]) if p)


def merge_trace(directory: str) -> None:
    try:
        merged = trace_files.merge(directory)
    except OSError as exc:
        log.warning("merging the job's trace in %s failed: %s", directory, exc)
        return
    if merged is not None:
        log.info("job trace: %s (open it in https://ui.perfetto.dev)", merged)
