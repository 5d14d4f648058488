"""The GPU validation in one run: the CUDA tests and the cold/warm benchmark.

Run it through `scripts/gpu-validate` on a machine with 2 GPUs. It
1. measures first-step times of examples/train.py at a size whose cold compile takes
   seconds, each row a real 2-GPU torchrun job on fresh dirs (rows below);
2. runs `pytest tests/cuda` (real 2-process NCCL jobs; see tests/cuda/*.py);
3. writes docs/results/gpu-validation.json and gpu-validation.md: the card, driver,
   torch, triton and Python versions, every row, and the tests' pass/fail counts.
The benchmark runs first, alone on the machine, so that no test job disturbs a timing.
A time budget keeps the whole run inside one device call: rows past it are skipped and
say so, and pytest gets what is left.

Rows (time to step 1 = when the slowest rank finished step 1, counted from the launch):
  ddp cold               coordinated, empty store and caches
  ddp uncoordinated-cold plain torchrun, empty caches: every rank compiles
  ddp warm-store         coordinated, the store of `cold`, a fresh node
  ddp warm-local         plain torchrun on the caches of `uncoordinated-cold`
  and the same four with --parallel none and with --parallel fsdp2 (each block compiled,
  then sharded, bf16 parameters), then (budget allowing) DDP with Dynamo's DDP graph
  splitting off (torch._dynamo.config.optimize_ddp = False): cold and warm-store.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import harness

REPO, RESULTS, TRAIN = harness.REPO, harness.RESULTS, harness.TRAIN
NPROC = 2
DEFAULT_TRAIN_ARGS = "--layers 6 --d-model 768 --heads 12 --seq 512 --batch 8 --steps 3"
TARGET_RATIO = 1.10


# -- benchmark --------------------------------------------------------------------------

def run_row(name: str, work: Path, node: Path, train_args: list[str], cache: str | None,
            env: dict[str, str] | None, timeout: float) -> dict[str, Any]:
    """One 2-rank job of train.py on `node`, and its row. Rows with `env` (switches of
    scripts/bench/counters.py) run under that wrapper, which also records PyTorch's
    counters; the others run train.py bare, as users do."""
    out = work / name
    cmd = harness.torchrun(NPROC)
    if cache is not None:
        cmd += harness.coordinator(cache, out / "stats", tag=TRAIN.stem if env else None)
    cmd += [str(harness.COUNTERS_WRAPPER)] if env else []
    cmd += [str(TRAIN), *train_args, "--out", str(out / "out")]
    extra = {"OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    if env:
        extra["PT2CC_BENCH_COUNTERS"] = str(out / "counters")
    rc, wall = harness.run(cmd, harness.job_env(node, extra), out / "log.txt", timeout)
    outs = harness.read_ranks(out / "out", NPROC)
    stats = list(harness.read_ranks(out / "stats", NPROC).values())
    counters = list(harness.read_ranks(out / "counters", NPROC).values())
    ok = rc == 0 and len(outs) == NPROC
    row: dict[str, Any] = {
        "name": name,
        "ok": ok,
        "time_to_step1_s": harness.time_to_step1(outs, NPROC) if ok else None,
        "time_to_step1_s_per_rank": harness.by_rank(outs, NPROC, "time_to_step1_s"),
        "step_times_s_rank0": outs.get(0, {}).get("step_times_s") if outs else None,
        "job_wall_s": round(wall, 2),
    }
    if stats:
        keep = ("fxgraph_cache_miss", "fxgraph_cache_hit", "fxgraph_cache_bypass",
                "autograd_cache_miss", "autograd_cache_hit", "autograd_cache_bypass",
                "waits", "waited_s", "published", "loaded", "store_errors")
        row["coordinator_stats"] = [{k: s.get(k) for k in keep} for s in stats]
    if counters:
        row["autograd_cache_bypass_reasons"] = counters[0].get("autograd_cache_bypass_reasons")
    if not ok:
        row["killed"] = rc is None
        row["error"] = f"exit {rc}; log tail:\n{harness.log_tail(out / 'log.txt')}"
    return row


def benchmark(args: argparse.Namespace, work: Path, deadline: float) -> dict[str, Any]:
    train_args = shlex.split(args.train_args)
    # One store per variant: each warm row then finds its own cold row's snapshot.
    ddp, noddp, fsdp2, nosplit = (str(work / f"store-{v}")
                                  for v in ("ddp", "noddp", "fsdp2", "nosplit"))
    rows: list[dict[str, Any]] = []
    failed: set[str] = set()

    def job(name: str, node: str, cache: str | None, extra: list[str] = (),
            env: dict[str, str] | None = None, needs: str | None = None) -> None:
        if args.rows and name not in args.rows.split(","):
            return
        left = deadline - time.monotonic()
        if needs in failed:
            rows.append({"name": name, "ok": False, "skipped": f"skipped: {needs} failed"})
            failed.add(name)
            return
        if left < args.min_job_s:
            rows.append({"name": name, "ok": False,
                         "skipped": f"skipped: {left:.0f} s of the time budget left"})
            failed.add(name)
            return
        print(f"[bench] {name} ...", flush=True)
        row = run_row(name, work, work / node, [*train_args, *extra], cache, env,
                      min(args.job_timeout_s, left))
        rows.append(row)
        if not row["ok"]:
            failed.add(name)
        t = row["time_to_step1_s"]
        print(f"[bench] {name}: " + (f"step 1 at {t:.2f} s" if t else "FAILED"), flush=True)

    nosplit_env = {"PT2CC_BENCH_OPTIMIZE_DDP": "0"}
    job("ddp/cold", "n-ddp-cold", ddp)
    job("ddp/uncoordinated-cold", "n-ddp-plain", None)
    job("ddp/warm-store", "n-ddp-fresh", ddp, needs="ddp/cold")
    job("ddp/warm-local", "n-ddp-plain", None, needs="ddp/uncoordinated-cold")
    job("noddp/cold", "n-noddp-cold", noddp, ["--parallel", "none"])
    job("noddp/warm-store", "n-noddp-fresh", noddp, ["--parallel", "none"], needs="noddp/cold")
    job("noddp/uncoordinated-cold", "n-noddp-plain", None, ["--parallel", "none"])
    job("noddp/warm-local", "n-noddp-plain", None, ["--parallel", "none"],
        needs="noddp/uncoordinated-cold")
    fsdp = ["--parallel", "fsdp2"]
    job("fsdp2/cold", "n-fsdp2-cold", fsdp2, fsdp)
    job("fsdp2/warm-store", "n-fsdp2-fresh", fsdp2, fsdp, needs="fsdp2/cold")
    job("fsdp2/uncoordinated-cold", "n-fsdp2-plain", None, fsdp)
    job("fsdp2/warm-local", "n-fsdp2-plain", None, fsdp, needs="fsdp2/uncoordinated-cold")
    job("ddp-nosplit/cold", "n-nosplit-cold", nosplit, env=nosplit_env)
    job("ddp-nosplit/warm-store", "n-nosplit-fresh", nosplit, env=nosplit_env,
        needs="ddp-nosplit/cold")

    by_name = {r["name"]: r for r in rows}

    def ratio(a: str, b: str) -> float | None:
        x = by_name.get(a, {}).get("time_to_step1_s")
        y = by_name.get(b, {}).get("time_to_step1_s")
        return round(x / y, 3) if x and y else None

    return {
        "train_args": args.train_args,
        "rows": rows,
        "warm_store_over_warm_local": {
            "ddp": ratio("ddp/warm-store", "ddp/warm-local"),
            "noddp": ratio("noddp/warm-store", "noddp/warm-local"),
            "fsdp2": ratio("fsdp2/warm-store", "fsdp2/warm-local"),
            "target": TARGET_RATIO,
        },
        "warm_ddp_over_warm_noddp": {
            "store": ratio("ddp/warm-store", "noddp/warm-store"),
            "store_ddp_split_off": ratio("ddp-nosplit/warm-store", "noddp/warm-store"),
        },
    }


# -- tests -------------------------------------------------------------------------------

def run_tests(args: argparse.Namespace, work: Path, timeout_s: float) -> dict[str, Any]:
    junit = work / "pytest.xml"
    log = work / "pytest.log"
    cmd = [sys.executable, "-m", "pytest", *args.tests, "-q", "-rfEs", "-p", "no:cacheprovider",
           f"--junitxml={junit}", f"--timeout={int(max(60, timeout_s - 15))}",
           f"--basetemp={work / 'pytest-tmp'}"]
    try:
        import xdist  # noqa: F401

        if args.test_workers > 1:
            cmd += ["-n", str(args.test_workers), "--dist", "loadfile"]
    except ImportError:
        pass
    print(f"[tests] {shlex.join(cmd)}", flush=True)
    t0 = time.monotonic()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        rc = harness.wait_or_kill(proc, timeout_s, grace_s=20)
    result: dict[str, Any] = {"command": shlex.join(cmd), "exit": rc,
                              "wall_s": round(time.monotonic() - t0, 1),
                              "log_tail": log.read_text(errors="replace")[-4000:]}
    result.update(_junit(junit))
    return result


def _junit(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"counts": None, "tests": []}
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
                message = (child.get("message") or child.text or "")[:1500]
                break
        counts[outcome] += 1
        tests.append({"test": f"{case.get('classname')}::{case.get('name')}",
                      "outcome": outcome, "time_s": float(case.get("time") or 0),
                      "message": message})
    return {"counts": counts, "tests": tests}


# -- report ------------------------------------------------------------------------------

def _bench_cells(r: dict[str, Any]) -> list[str]:
    """A benchmark row's cells; per-rank columns are rank0/rank1."""
    if r.get("skipped"):
        return [r["name"], r["skipped"], "", "", "", ""]
    st = r.get("coordinator_stats") or []
    miss = "/".join(str(s["fxgraph_cache_miss"]) for s in st) or "n/a"
    hit = "/".join(str(s["fxgraph_cache_hit"]) for s in st) or "n/a"
    waits = "/".join(f"{s['waits']} ({s['waited_s']:.1f} s)" for s in st) or "n/a"
    t1 = r.get("time_to_step1_s")
    failed = "killed at its time limit" if r.get("killed") else "FAILED"
    return [r["name"], f"{t1:.2f} s" if t1 else failed, miss, hit, waits,
            f"{r['job_wall_s']:.1f} s"]


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# GPU validation",
        "",
        f"{m['gpu_count']}x {m['gpu_name']} (driver {m['driver']}), torch {m['torch']} "
        f"(CUDA {m['cuda_runtime']}), triton {m['triton']}, Python {m['python']}; "
        f"{report['time']}; written by `scripts/gpu-validate` "
        f"in {report['wall_s']:.0f} s.",
        "",
    ]
    t = report.get("tests")
    if t:
        c = t.get("counts") or {}
        lines += [f"## Tests (`pytest {' '.join(report['tests_run'])}`): "
                  f"{c.get('passed', 0)} passed, "
                  f"{c.get('failed', 0)} failed, {c.get('error', 0)} errors, "
                  f"{c.get('skipped', 0)} skipped or xfailed (exit {t.get('exit')}, "
                  f"{t.get('wall_s')} s)",
                  ""]
        bad = [x for x in t.get("tests", []) if x["outcome"] in ("failed", "error")]
        for x in bad:
            first = x["message"].strip().splitlines()[0][:200] if x["message"].strip() else ""
            lines.append(f"- {x['outcome']}: `{x['test']}`: {first}")
        xfail = [x for x in t.get("tests", []) if x["outcome"] == "skipped"
                 and "needs 2 CUDA GPUs" not in x["message"]]
        for x in xfail:
            lines.append(f"- skipped/xfail: `{x['test']}`: {x['message'].strip()[:300]}")
        if bad or xfail:
            lines.append("")
    b = report.get("benchmark")
    if b:
        lines += [f"## First step, examples/train.py `{b['train_args']}`, 2 ranks", ""]
        lines += harness.md_table(
            ["row", "time to step 1 (max over ranks)", "graphs compiled per rank",
             "loaded per rank", "waits", "job wall"], map(_bench_cells, b["rows"]), spaced=True)
        ratios = b["warm_store_over_warm_local"]
        lines += ["", f"warm-store / warm-local: DDP {ratios['ddp']}, no DDP {ratios['noddp']}, "
                  f"FSDP2 {ratios['fsdp2']} (target <= {ratios['target']}).",
                  f"warm DDP / warm no-DDP (from the store): {b['warm_ddp_over_warm_noddp']}.",
                  "Per-rank columns are rank0/rank1 (coordinated rows only)."]
        reasons = next((r.get("autograd_cache_bypass_reasons") for r in b["rows"]
                        if r.get("autograd_cache_bypass_reasons")), None)
        if reasons:
            lines += ["", "AOTAutograd cache bypass reasons seen (rank 0):"]
            lines += [f"- {n}x {why[:200]}" for why, n in reasons.items()]
    return "\n".join(lines) + "\n"


def pack_logs(work: Path, target: Path) -> None:
    """Logs and JSON of every job (no caches): what explains a failure after the run."""
    import tarfile

    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w:gz") as tar:
        for path in sorted(work.rglob("*")):
            if "inductor" in path.parts or "triton" in path.parts or not path.is_file():
                continue
            if path.suffix in (".txt", ".log", ".json", ".xml") and path.stat().st_size < 4 << 20:
                tar.add(path, arcname=str(path.relative_to(work)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-args", default=DEFAULT_TRAIN_ARGS)
    p.add_argument("--budget-s", type=float, default=440.0, help="the whole run's time budget")
    p.add_argument("--tests-reserve-s", type=float, default=130.0,
                   help="time kept for the tests when the benchmark runs first")
    p.add_argument("--job-timeout-s", type=float, default=150.0)
    p.add_argument("--min-job-s", type=float, default=30.0)
    p.add_argument("--test-workers", type=int, default=3)
    p.add_argument("--rows", default="", help="comma-separated benchmark rows (default: all)")
    p.add_argument("--tests", nargs="+", default=["tests/cuda"], help="what pytest runs")
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--skip-bench", action="store_true")
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, caches)")
    p.add_argument("--logs-tar", metavar="PATH",
                   help="also pack every job's log and JSON files into PATH (.tar.gz)")
    args = p.parse_args(argv)

    os.environ.update(harness.SAFE_ENV)
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="gpu-validate-"))
    report: dict[str, Any] = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv[1:],
                              "machine": harness.gpu_machine_info(), "work_dir": str(work)}
    print(json.dumps(report["machine"], indent=1), flush=True)
    if not args.skip_bench:
        bench_deadline = t0 + args.budget_s - (0 if args.skip_tests else args.tests_reserve_s)
        report["benchmark"] = benchmark(args, work / "bench", bench_deadline)
    if not args.skip_tests:
        report["tests_run"] = args.tests
        left = t0 + args.budget_s - time.monotonic()
        report["tests"] = run_tests(args, work, max(60.0, left))
    report["wall_s"] = round(time.monotonic() - t0, 1)

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-validation.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "gpu-validation.md").write_text(markdown(report))
    print(markdown(report), flush=True)
    if args.logs_tar:
        pack_logs(work, Path(args.logs_tar))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    tests = report.get("tests", {})
    counts = tests.get("counts") or {}
    return 0 if (args.skip_tests or (tests.get("exit") == 0 and not counts.get("failed"))) else 1


if __name__ == "__main__":
    sys.exit(main())
