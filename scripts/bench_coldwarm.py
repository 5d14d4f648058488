"""Cold vs. warm first-step times of examples/train.py, with and without the coordinator.

Why: the coordinator is only worth having if a job on a fresh node that loads from the
shared store (``warm-store``) reaches its first step about as fast as a job with a warm
local compile cache (``warm-local``). This script measures the four cases side by side,
each as a real ``torchrun --standalone`` job, and prints a table. It never asserts a
timing: numbers on shared CI machines are noisy, and the table is for people to read.

Rows, run in this order (each repeat on fresh temp dirs and a fresh store):
  uncoordinated-cold  plain torchrun, empty local caches: every rank compiles
  warm-local          plain torchrun, reusing the caches of uncoordinated-cold
  cold                torchrun -m coordinator, empty store and empty local caches
  warm-store          torchrun -m coordinator, the store of ``cold``, a fresh "node"
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "examples" / "train.py"
ROWS = ("uncoordinated-cold", "warm-local", "cold", "warm-store")
# Environment that would leak caches or a store into a row that must not see them.
_SCRUB = (
    "TORCHINDUCTOR_CACHE_DIR",
    "TRITON_CACHE_DIR",
    "PT2CC_CACHE",
    "PT2CC_NODE_CACHE_DIR",
    "PT2CC_T0",
)


def wait_or_kill(proc: subprocess.Popen, timeout: float, grace_s: float) -> int | None:
    """The job's exit status, or None when it ran past `timeout` and was ended.

    The job has its own session: SIGTERM to it and its workers (and only those), then
    SIGKILL after `grace_s`.
    """
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return None


@dataclass
class RunResult:
    """One torchrun job: what it measured, or why it measured nothing."""

    ok: bool
    wall_s: float
    time_to_step1_s: float | None = None
    stats: dict[str, float] | None = None
    error: str | None = None
    log: str | None = None


@dataclass
class Row:
    name: str
    runs: list[RunResult] = field(default_factory=list)

    def good(self) -> list[RunResult]:
        return [r for r in self.runs if r.ok and r.time_to_step1_s is not None]

    def median_step1(self) -> float | None:
        vals = [r.time_to_step1_s for r in self.good() if r.time_to_step1_s is not None]
        return statistics.median(vals) if vals else None

    def median_wall(self) -> float | None:
        vals = [r.wall_s for r in self.good()]
        return statistics.median(vals) if vals else None

    def median_stats(self) -> dict[str, float] | None:
        with_stats = [r.stats for r in self.good() if r.stats is not None]
        if not with_stats:
            return None
        keys = sorted({k for s in with_stats for k in s})
        return {k: statistics.median(s[k] for s in with_stats if k in s) for k in keys}

    def errors(self) -> list[str]:
        return [r.error for r in self.runs if r.error]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=2, help="ranks per job")
    p.add_argument("--steps", type=int, default=3, help="training steps per job")
    p.add_argument("--train-args", default="", help='extra args for train.py, e.g. "--layers 4"')
    p.add_argument("--repeat", type=int, default=1, help="report the median of K runs per row")
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of rows")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per torchrun job")
    p.add_argument("--json", default=None, help="default: docs/results/bench-coldwarm-<host>.json")
    p.add_argument("--keep", action="store_true", help="keep temp dirs (logs, store, caches)")
    args = p.parse_args(argv)
    unknown = set(args.rows.split(",")) - set(ROWS)
    if unknown:
        p.error(f"unknown rows {sorted(unknown)}; choose from {ROWS}")
    return args


def sum_rank_files(prefix: Path, nproc: int) -> dict[str, float] | None:
    """Sum the numeric fields of ``<prefix>.rank<R>.json`` over ranks; None if none exist."""
    totals: dict[str, float] = {}
    found = False
    for rank in range(nproc):
        path = Path(f"{prefix}.rank{rank}.json")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        found = True
        for key, value in _flatten(data):
            totals[key] = totals.get(key, 0.0) + value
    return totals if found else None


def _flatten(data: Any, prefix: str = "") -> list[tuple[str, float]]:
    """Numeric leaves of nested dicts as dotted keys; rank ids and non-numbers are skipped."""
    out: list[tuple[str, float]] = []
    if isinstance(data, dict):
        for k, v in data.items():
            if k in ("rank", "world_size", "local_rank"):
                continue
            out.extend(_flatten(v, f"{prefix}{k}."))
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        out.append((prefix.rstrip("."), float(data)))
    return out


def max_time_to_step1(prefix: Path, nproc: int) -> float | None:
    """The job reaches its first step when its slowest rank does."""
    times = []
    for rank in range(nproc):
        try:
            t = json.loads(Path(f"{prefix}.rank{rank}.json").read_text())["time_to_step1_s"]
        except (OSError, ValueError, KeyError):
            return None
        if t is None or not math.isfinite(t):
            return None
        times.append(float(t))
    return max(times) if times else None


def _worker_error(path: Path, lines: int = 10) -> str:
    """The workers' last output before torchrun's own failure report, which says nothing."""
    try:
        text = path.read_text(errors="replace").splitlines()[1:]  # [0] is the command
    except OSError:
        return ""
    for i, line in enumerate(text):
        agent_traceback = line.startswith("Traceback") and any(
            "distributed/run.py" in later or "distributed/elastic/" in later
            for later in text[i + 1 : i + 6]
        )
        agent_line = any(
            m in line for m in ("failed (exitcode:", "ChildFailedError", "death signal")
        )
        if agent_traceback or agent_line:
            text = text[:i]
            break
    deduped: list[str] = []  # every rank tends to print the same error
    for line in text:
        if line not in deduped[-4:]:
            deduped.append(line)
    return "\n".join("  " + line for line in deduped[-lines:])


def run_job(
    name: str,
    workdir: Path,
    nproc: int,
    train_argv: list[str],
    *,
    caches: Path,
    store: Path | None,
    timeout: float,
) -> RunResult:
    """Run one torchrun job; caches holds this node's local caches (reused for warm-local)."""
    jobdir = workdir / name
    jobdir.mkdir(parents=True, exist_ok=True)
    out_prefix = jobdir / "out"
    log = jobdir / "log.txt"
    tmpdir = jobdir / "tmp"
    tmpdir.mkdir(exist_ok=True)

    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env["TORCHINDUCTOR_CACHE_DIR"] = str(caches / "inductor")
    env["TRITON_CACHE_DIR"] = str(caches / "triton")
    env["TMPDIR"] = str(tmpdir)  # a fresh node also has a fresh /tmp
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc-per-node", str(nproc)]
    stats_file: Path | None = None
    if store is not None:
        stats_file = workdir / f"{name}.stats.json"
        env["PT2CC_NODE_CACHE_DIR"] = str(caches / "node")
        cmd += ["-m", "coordinator", "--cache", store.as_uri(), "--stats-file", str(stats_file)]
        cmd += [str(TRAIN.relative_to(REPO))]
    else:
        cmd += [str(TRAIN.relative_to(REPO))]
    cmd += train_argv + ["--out", str(out_prefix)]

    print(f"[{name}] {shlex.join(cmd)}", flush=True)
    with log.open("w") as logf:
        logf.write(shlex.join(cmd) + "\n")
        logf.flush()
        # Taken last so that torchrun's own start-up is part of time-to-first-step.
        env["PT2CC_T0"] = repr(time.time())
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True
        )
        rc = wait_or_kill(proc, timeout, grace_s=30)
    wall = time.perf_counter() - t0

    if rc != 0:
        why = f"timed out after {timeout:.0f}s (killed)" if rc is None else f"exit status {rc}"
        return RunResult(
            False, wall, error=f"{why}; log {log}:\n{_worker_error(log)}", log=str(log)
        )
    step1 = max_time_to_step1(out_prefix, nproc)
    stats = sum_rank_files(stats_file, nproc) if stats_file is not None else None
    if step1 is None:
        err = f"exit 0 but no time_to_step1_s in {out_prefix}.rank*.json; log {log}"
        return RunResult(False, wall, stats=stats, error=err, log=str(log))
    return RunResult(True, wall, step1, stats, log=str(log))


def run_once(args: argparse.Namespace, rows: dict[str, Row], base: Path, rep: int) -> None:
    """One repeat of every selected row, on fresh dirs and a fresh store."""
    work = base / f"rep{rep}"
    train_argv = ["--steps", str(args.steps), *shlex.split(args.train_args)]
    plain_caches = work / "plain-node"
    store = work / "store"
    store.mkdir(parents=True, exist_ok=True)
    jobs: dict[str, tuple[Path, Path | None]] = {
        "uncoordinated-cold": (plain_caches, None),
        "warm-local": (plain_caches, None),  # the same node as uncoordinated-cold
        "cold": (work / "cold-node", store),
        "warm-store": (work / "fresh-node", store),  # same store, nothing local
    }
    # A warm row measures nothing if the run that was to warm it failed.
    needs = {"warm-local": "uncoordinated-cold", "warm-store": "cold"}
    failed: set[str] = set()
    for name in ROWS:
        if name not in rows:
            continue
        if needs.get(name) in failed:
            why = f"skipped: {needs[name]} failed in this repeat, so nothing is warm"
            rows[name].runs.append(RunResult(False, 0.0, error=why))
            print(f"[{name}] {why}", flush=True)
            continue
        caches, job_store = jobs[name]
        result = run_job(
            name,
            work,
            args.nproc,
            train_argv,
            caches=caches,
            store=job_store,
            timeout=args.timeout,
        )
        rows[name].runs.append(result)
        if result.ok:
            print(f"[{name}] time to step 1: {result.time_to_step1_s:.2f}s", flush=True)
        else:
            failed.add(name)
            print(f"[{name}] FAILED: {result.error}", flush=True)


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        info["cuda_device_count"] = torch.cuda.device_count()
    except Exception as exc:  # the table matters more than this metadata
        info["torch_error"] = repr(exc)
    return info


def _fmt(x: float | None, unit: str = "s") -> str:
    return "n/a" if x is None else f"{x:.2f}{unit}"


def _fmt_stat(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.3f}"


def print_table(rows: dict[str, Row], nproc: int) -> float | None:
    print()
    header = f"{'row':<20} {'ok':>5} {'step1 max':>10} {'job wall':>10}  stats"
    print(header)
    print("-" * len(header))
    for row in rows.values():
        ok = f"{len(row.good())}/{len(row.runs)}"
        stats = "n/a" if row.median_stats() is None else "below"
        print(
            f"{row.name:<20} {ok:>5} {_fmt(row.median_step1()):>10} "
            f"{_fmt(row.median_wall()):>10}  {stats}"
        )
    print(f"(step1 max: slowest of {nproc} ranks, from torchrun launch; median over runs)")
    ratio = None
    ws = rows["warm-store"].median_step1() if "warm-store" in rows else None
    wl = rows["warm-local"].median_step1() if "warm-local" in rows else None
    if ws is not None and wl:
        ratio = ws / wl
    print(f"warm-store / warm-local: {'n/a' if ratio is None else f'{ratio:.2f}'}")
    for row in rows.values():
        stats = row.median_stats()
        if stats is not None:
            print(f"\n{row.name} coordinator stats, summed over ranks:")
            print("  " + " ".join(f"{k}={_fmt_stat(v)}" for k, v in stats.items()))
    for row in rows.values():
        for err in row.errors():
            print(f"\n{row.name} failed: {err}")
    return ratio


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    selected = [r for r in ROWS if r in args.rows.split(",")]
    rows = {name: Row(name) for name in selected}
    base = Path(tempfile.mkdtemp(prefix="bench-coldwarm-"))
    print(f"work dir {base}", flush=True)
    for rep in range(args.repeat):
        run_once(args, rows, base, rep)
    ratio = print_table(rows, args.nproc)

    json_path = Path(
        args.json or REPO / "docs" / "results" / f"bench-coldwarm-{socket.gethostname()}.json"
    )
    report = {
        "benchmark": "bench_coldwarm",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv[1:],
        "nproc": args.nproc,
        "steps": args.steps,
        "train_args": args.train_args,
        "repeat": args.repeat,
        "machine": machine_info(),
        "rows": [
            {
                "name": row.name,
                "ok_runs": len(row.good()),
                "runs": len(row.runs),
                "time_to_step1_s_max_over_ranks": row.median_step1(),
                "job_wall_s": row.median_wall(),
                "coordinator_stats_summed_over_ranks": row.median_stats(),
                "each_run": [
                    {
                        "ok": r.ok,
                        "time_to_step1_s": r.time_to_step1_s,
                        "wall_s": r.wall_s,
                        "stats": r.stats,
                        "error": r.error,
                    }
                    for r in row.runs
                ],
            }
            for row in rows.values()
        ],
        "warm_store_over_warm_local": ratio,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {json_path}")
    failed = any(row.errors() for row in rows.values())
    if args.keep or failed:
        print(f"kept {base}" + (" (a row failed: its log is there)" if failed else ""))
    else:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
