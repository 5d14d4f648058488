"""What every fault test checks: the job's outputs, its waits, its warnings, the store."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.multiprocess import jobs

JOB = Path(__file__).with_name("fault_job.py")
WAIT_TIMEOUT_S = 60.0
# Short bounds, so that a fault that is handled only by a deadline still ends in time.
LAUNCHER_ARGS = ["--wait-timeout", str(int(WAIT_TIMEOUT_S)), "--stale-after", "10"]
ENV = {"PT2CC_STORE_TIMEOUT_S": "5", "PT2CC_HEARTBEAT_S": "1"}
WARNING = re.compile(r"^\[pt2cc rank (\d+) [0-9:.]+\] WARNING (.*)$", re.MULTILINE)


def run(tmp: Path, name: str, store: str | None, args: list[str] = (), *,
        env: dict[str, str] | None = None, launcher_args: list[str] = (),
        snapshot: bool = False, timeout: float = 240, **kwargs: object) -> jobs.Job:
    """One 2-rank torchrun job of fault_job.py on a fresh node."""
    largs = [*LAUNCHER_ARGS, *([] if snapshot else ["--no-snapshot"]), *launcher_args]
    return jobs.run(JOB, list(args), node=tmp / f"node-{name}", store=store,
                    out=tmp / f"out-{name}", env={**ENV, **(env or {})},
                    launcher_args=largs, timeout=timeout, **kwargs)


def start(tmp: Path, name: str, store: str | None, args: list[str] = (), *,
          env: dict[str, str] | None = None, launcher_args: list[str] = (),
          snapshot: bool = False, **kwargs: object):
    largs = [*LAUNCHER_ARGS, *([] if snapshot else ["--no-snapshot"]), *launcher_args]
    return jobs.start(JOB, list(args), node=tmp / f"node-{name}", store=store,
                      out=tmp / f"out-{name}", env={**ENV, **(env or {})},
                      launcher_args=largs, **kwargs)


def assert_outputs_are_eager(job: jobs.Job, *, second: bool = False) -> None:
    """Every rank wrote its results, and compiled equals eager (the job without us)."""
    assert len(job.outs) == 2, job.output[-4000:]
    for out in job.outs:
        assert out["f"] == pytest.approx(out["f_eager"], rel=1e-5, abs=1e-6)
        if second:
            assert out["g"] == pytest.approx(out["g_eager"], rel=1e-5, abs=1e-6)
    assert job.outs[0]["f"] == job.outs[1]["f"]


def assert_no_wait_past_deadline(job: jobs.Job, bound_s: float = WAIT_TIMEOUT_S) -> None:
    assert len(job.stats) == 2, job.output[-4000:]
    for stats in job.stats:
        assert stats["waited_s"] <= bound_s, stats


def warnings(job: jobs.Job, *, trust: bool = False) -> list[tuple[int, str]]:
    """The job's warning lines (rank, text); the unsigned-store warning only with `trust`."""
    found = [(int(r), text) for r, text in WARNING.findall(job.output)]
    return found if trust else [(r, t) for r, t in found if "others can write" not in t]


def brief(job: jobs.Job) -> str:
    """What a failed assertion should show: per-rank counters and the output's tail."""
    keys = ("rank", "claimed", "loaded", "published", "waits", "waited_s", "store_errors",
            "fxgraph_cache_miss", "fxgraph_cache_hit", "autograd_cache_hit")
    rows = [{k: s.get(k) for k in keys} | {"q": s.get("store", {}).get("quarantined")}
            for s in job.stats]
    return f"{rows}\n{job.output[-5000:]}"


def pt2cc(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "storage.cli", *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, cwd=jobs.REPO)


def verify(url: str, env: dict[str, str] | None = None) -> dict:
    """`pt2cc verify --json`: asserts every object verifies and no entry dangles."""
    res = pt2cc("verify", url, "--json", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout)


def entries(url: str, env: dict[str, str] | None = None) -> list[dict]:
    """`pt2cc ls --json`: one dict per (fingerprint, kind, key) with its digests."""
    res = pt2cc("ls", url, "--json", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout)


def digests(url: str, env: dict[str, str] | None = None) -> set[tuple[str, str, str]]:
    """(kind, key, digest) of every index entry."""
    return {(g["kind"], g["key"], d) for g in entries(url, env) for d in g["digests"]}
