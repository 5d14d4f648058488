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
import shlex
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import harness

ROWS = ("uncoordinated-cold", "warm-local", "cold", "warm-store")
TRAIN = str(harness.TRAIN.relative_to(harness.REPO))


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
    return harness.parse_rows(p, argv, ROWS)


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
    """Run one torchrun job; caches is this node (reused for warm-local)."""
    jobdir = workdir / name
    out_prefix, log = jobdir / "out", jobdir / "log.txt"
    cmd = harness.torchrun(nproc)
    stats_file: Path | None = None
    if store is not None:
        stats_file = workdir / f"{name}.stats.json"
        cmd += harness.coordinator(store.as_uri(), stats_file)
    cmd += [TRAIN, *train_argv, "--out", str(out_prefix)]
    print(f"[{name}] {shlex.join(cmd)}", flush=True)
    rc, wall = harness.run(cmd, harness.job_env(caches), log, timeout, grace_s=30)
    if rc != 0:
        why = f"timed out after {timeout:.0f}s (killed)" if rc is None else f"exit status {rc}"
        return RunResult(
            False, wall, error=f"{why}; log {log}:\n{harness.worker_error(log)}", log=str(log)
        )
    step1 = harness.time_to_step1(harness.read_ranks(out_prefix, nproc), nproc)
    stats = None
    if stats_file is not None:
        found = harness.read_ranks(stats_file, nproc)
        stats = harness.sum_numbers(found.values()) if found else None
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
        args.json or harness.RESULTS / f"bench-coldwarm-{socket.gethostname()}.json"
    )
    report = {
        "benchmark": "bench_coldwarm",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv[1:],
        "nproc": args.nproc,
        "steps": args.steps,
        "train_args": args.train_args,
        "repeat": args.repeat,
        "machine": harness.machine_info(),
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
    harness.clean_up(base, args.keep or failed,
                     " (a row failed: its log is there)" if failed else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
