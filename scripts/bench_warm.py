"""Warm start from the store vs warm local caches, repeated, with a per-phase breakdown.

Each repeat runs, on fresh work dirs: `none` then `warm-local` (PyTorch alone, rerun on
its own warm caches: the floor), and ours cold then warm on a fresh node, on file:// and
on s3:// (moto's server on loopback); the rows are scripts/bench.py's. A repeat's ratio
is its warm row over its own warm-local row; the report gives each repeat's ratio and
their mean, and where a warm job's time went: the coordinator's own phases (index
listing, snapshot fetch/unpacking/Mega-Cache load, object fetches, waiting for
the prefetch) and PyTorch's (`dynamo_timed` phases, summed per rank), each averaged over
ranks and repeats. `--warm-repeat K` runs a repeat's warm rows K times after its cold
rows (ours on a fresh node each time), each round one more sample of the warm ratio for
the time of its warm jobs (warm-local and one per store). Writes
docs/results/warm-<machine>.json and .md.

    .venv/bin/python scripts/bench_warm.py [--repeat 3] [--stores file,s3] [--train-args "..."]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import bench  # scripts/bench.py: rows and servers
import harness

# PyTorch phases worth a column: where a warm start spends its time.
TORCH_PHASES = ("_compile.compile_inner", "OutputGraph.call_user_compiler",
                "create_aot_dispatcher_function", "compile_fx_inner", "async_compile.wait")
TARGETS = {"file": 1.10, "s3": 1.15}
STORE_COUNTS = ("gets", "puts", "fetches")  # a rank's store requests, beside the phases
COUNTED_PHASES = ("claim", "wait", "publish", "key_listing", "object_fetch")  # per key


def phases_of(row: dict, outs: list[dict]) -> dict[str, float]:
    """Seconds per phase, mean over the row's ranks: the coordinator's own (its stats
    files) and PyTorch's (train.py's output); and the store requests a rank made."""
    total: defaultdict[str, float] = defaultdict(float)
    stats = row.get("coordinator_stats") or []
    for s in stats:
        for name, v in s.get("phases", {}).items():
            total[f"pt2cc:{name}"] += v["s"] / len(stats)
            if name in COUNTED_PHASES:
                total[f"pt2cc:{name} (calls)"] += v["calls"] / len(stats)
        for name in STORE_COUNTS:
            total[f"store:{name} (count)"] += s.get("store", {}).get(name, 0) / len(stats)
    for o in outs:
        total["job:time_to_main_s"] += o.get("time_to_main_s", 0.0) / len(outs)
        for name, v in o.get("cpu_to_step1", {}).items():  # CPU from main() to step 1
            if name.endswith("_s"):
                total[f"job:cpu {name}"] += v / len(outs)
        for name, n in o.get("cache_counts", {}).items():  # PyTorch's hits and misses
            total[f"job:{name} (count)"] += n / len(outs)
        for name, v in o.get("compile_phases_s", {}).items():
            if name in TORCH_PHASES:
                total[f"torch:{name}"] += v / len(outs)
    return dict(total)


def outs(work: Path, row: str, nproc: int) -> list[dict]:
    return list(harness.read_ranks(work / "jobs" / row / "out", nproc).values())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--stores", default="file,s3", help="of file, s3: the stores to run")
    p.add_argument("--machine", default=None)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--train-args", default="")
    p.add_argument("--timeout", type=float, default=900.0)
    bench.add_job_options(p)
    p.add_argument("--out-dir", default=str(harness.RESULTS))
    p.add_argument("--label", default="", help="added to the file names (e.g. ddp, fsdp2)")
    p.add_argument("--preimport", action="store_true", help="also run PyTorch alone, cold and "
                   "on its warm caches, with what our launcher imports and starts before the "
                   "script (rows preimport-cold, preimport-warm): does moving that work cost "
                   "or save time of its own?")
    p.add_argument("--profile", action="store_true", help="each worker's main thread under "
                   "cProfile (kept with --traces, as <row>/profile.rank<R>.prof)")
    p.add_argument("--sample", action="store_true", help="each worker under py-spy, every "
                   "thread and subprocess (kept with --traces, as <row>/sample.rank<R>.txt)")
    p.add_argument("--warm-repeat", type=int, default=1, help="warm rows per repeat: after "
                   "a repeat's cold rows, warm-local and each ours-warm row (on a fresh node "
                   "each time) run this many times, each round a sample beside its own "
                   "warm-local; more samples of the warm ratio per minute than more repeats")
    p.add_argument("--traces", action="store_true", help="keep each coordinated job's "
                   "timeline (--trace) in OUT_DIR/traces-<machine>[-label]/rep<N>/<row>")
    args = p.parse_args(argv)
    stores = args.stores.split(",")
    if not stores or set(stores) - set(TARGETS):
        p.error(f"--stores: a comma-separated list of {', '.join(TARGETS)}, not {args.stores!r}")
    plain = ["none", "warm-local"] + (["preimport-cold", "preimport-warm"] if args.preimport
                                      else [])
    ours = [f"ours-{p}-{s}" for s in stores for p in ("cold", "warm")]
    args.rows = ",".join(plain + ours)
    info = harness.machine_info()
    harness.warm_bytecode_cache()
    bench.resolve_compile_threads(args, info)
    name = args.machine or harness.machine_name(info)
    repeats: list[dict] = []

    def keep(sample: dict) -> None:
        """Reported at once: a run cut short by a time limit keeps what it measured."""
        repeats.append(sample)
        print(json.dumps({k: v for k, v in sample.items() if "phases" not in k}), flush=True)
        write_report(args, name, info, repeats, stores)

    for rep in range(args.repeat):
        work = Path(tempfile.mkdtemp(prefix=f"bench-warm-{rep}-"))
        if args.traces:
            args.trace_dir = str(Path(args.out_dir) / f"traces-{name}"
                                 f"{'-' + args.label if args.label else ''}" / f"rep{rep + 1}")
        # Which side runs first alternates, so that drift within a repeat (page cache,
        # clocks, the host's other load) does not favour one side in the mean.
        args.row_order = plain + ours if rep % 2 == 0 else ours + plain
        servers = bench.Servers(work)
        try:
            rows = bench.run_rows(args, work, servers)
            keep(first_round(args, work, rows, stores, rep))
            for r in range(1, args.warm_repeat):
                again = rerun_warm(args, work, servers, plain + ours, rep + r)
                keep(warm_round(args, work, again, stores, (rep + r) % 2 == 0,
                                f"{rep + 1}.{r + 1}"))
        finally:
            servers.stop()
        if args.traces:  # each rank's output and counters beside its timeline
            for f in [*(work / "jobs").glob("*/*.rank*.*"), *(work / "jobs").glob("*/log.txt")]:
                dest = Path(args.trace_dir) / f.parent.name
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, dest / f.name)
        shutil.rmtree(work, ignore_errors=True)
    print("\n" + write_report(args, name, info, repeats, stores))
    return 0


def first_round(args: argparse.Namespace, work: Path, rows: dict[str, dict],
                stores: list[str], rep: int) -> dict:
    """A repeat's first sample: its warm ratios, and its cold ones (each cold row over
    `none`, PyTorch alone compiling on every rank)."""
    out = warm_round(args, work, rows, stores, rep % 2 == 0, f"{rep + 1}")
    out["none_s"] = rows["none"].get("time_to_step1_s")
    if args.preimport:
        for kind, base in (("warm", out["warm_local_s"]), ("cold", out["none_s"])):
            row = f"preimport-{kind}"
            t = rows[row].get("time_to_step1_s")
            out[f"preimport_{kind}_s"] = t
            out[f"preimport_{kind}_ratio"] = round(t / base, 3) if t and base else None
            out[f"preimport_{kind}_phases"] = phases_of(rows[row], outs(work, row, args.nproc))
    for s in stores:
        cold = rows[f"ours-cold-{s}"]
        c, none = cold.get("time_to_step1_s"), out["none_s"]
        out[s].update(cold_s=c, cold_ratio=round(c / none, 3) if c and none else None,
                      cold_phases=phases_of(cold, outs(work, f"ours-cold-{s}", args.nproc)))
    out["none_phases"] = phases_of(rows["none"], outs(work, "none", args.nproc))
    return out


def warm_round(args: argparse.Namespace, work: Path, rows: dict[str, dict],
               stores: list[str], pytorch_first: bool, sample: str) -> dict:
    """One sample of the warm ratio: each store's warm row over this round's warm-local."""
    floor = rows["warm-local"].get("time_to_step1_s")
    out: dict = {"sample": sample, "warm_local_s": floor,
                 "first": "pytorch" if pytorch_first else "ours",
                 "warm_local_phases": phases_of(rows["warm-local"],
                                                outs(work, "warm-local", args.nproc))}
    for s in stores:
        warm = rows[f"ours-warm-{s}"]
        t = warm.get("time_to_step1_s")
        out[s] = {"warm_s": t, "cold_s": None, "cold_ratio": None,
                  "ratio": round(t / floor, 3) if t and floor else None,
                  "phases": phases_of(warm, outs(work, f"ours-warm-{s}", args.nproc))}
    return out


def rerun_warm(args: argparse.Namespace, work: Path, servers: bench.Servers,
               names: list[str], turn: int) -> dict:
    """The warm rows again on the stores the cold rows filled, each ours-warm row on a
    fresh node (its node and output removed), who goes first alternating by `turn`."""
    warm = [r for r in names if r == "warm-local" or r.startswith("ours-warm")]
    for row in warm:
        if row.startswith("ours"):
            shutil.rmtree(work / f"node-{row}", ignore_errors=True)
        shutil.rmtree(work / "jobs" / row, ignore_errors=True)
    rerun = argparse.Namespace(**vars(args))
    rerun.rows = ",".join(warm)
    rerun.row_order = warm if turn % 2 == 0 else warm[1:] + warm[:1]
    return bench.run_rows(rerun, work, servers)


def write_report(args: argparse.Namespace, name: str, info: dict, repeats: list[dict],
                 stores: list[str]) -> str:
    report = {"benchmark": "scripts/bench_warm.py", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine_name": name, "machine": info, "nproc": args.nproc,
              "train_args": args.train_args, "compile_threads": args.compile_threads,
              "ours_args": args.ours_args, "repeats": repeats}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"warm-{name}" + ("-" + args.label if args.label else "")
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    md = render(report, stores)
    (out / f"{stem}.md").write_text(md)
    return md


def _repeat_cells(i: int, rep: dict, stores: list[str]) -> list:
    """A repeat's row: its floor, then each store's warm time and ratio to that floor."""
    cells = [rep.get("sample", i), harness.fmt(rep["warm_local_s"] or None)]
    for s in stores:
        r = rep[s]
        cells += [f"{r['warm_s']:.2f}", f"{r['ratio']:.3f}"] if r["ratio"] else ["—", "—"]
    return cells


def render(report: dict, stores: list[str]) -> str:
    reps = report["repeats"]
    m = report["machine"]
    lines = [f"# Warm start vs warm local caches: {report['machine_name']}", "",
             f"{report['time']}; torch {m.get('torch')}, {report['nproc']} ranks, "
             f"examples/train.py `{report['train_args']}`, Inductor's compile workers per "
             f"rank: {report.get('compile_threads', '1')}"
             + (f", ours with `{report['ours_args']}`" if report.get("ours_args") else "")
             + "; time until every rank finished step 1, each repeat beside its own "
             "warm-local row.", ""]
    cols = [c for s in stores for c in (f"ours warm {s} (s)", f"ratio {s}")]
    lines += harness.md_table(["repeat", "warm-local (s)", *cols],
                              (_repeat_cells(i + 1, r, stores) for i, r in enumerate(reps)),
                              align="r" * (2 + len(cols)))
    lines.append("")
    for s in stores:
        ratios = [r[s]["ratio"] for r in reps if r[s]["ratio"]]
        if ratios:
            mean = statistics.mean(ratios)
            verdict = "met" if mean <= TARGETS[s] else "NOT met"
            lines.append(f"- warm {s}: mean ratio {mean:.3f} over {len(ratios)} samples"
                         f"{interval(ratios)} (CPU target <= {TARGETS[s]:.2f}: {verdict}; "
                         "GPU target <= 1.05)")
        cold = [r[s]["cold_ratio"] for r in reps if r[s]["cold_ratio"]]
        if cold:
            lines.append(f"- cold {s}: coordinated / every rank compiling, mean "
                         f"{statistics.mean(cold):.3f} over {len(cold)} repeats"
                         f"{interval(cold)}: {', '.join(f'{c:.3f}' for c in cold)}")
    for kind, base in (("warm", "warm-local"), ("cold", "none")):
        measured = [r for r in reps if r.get(f"preimport_{kind}_ratio")]
        pre = [r[f"preimport_{kind}_ratio"] for r in measured]
        if pre:
            mains = [r[f"preimport_{kind}_phases"]["job:time_to_main_s"] for r in measured]
            lines.append(f"- PyTorch alone with our launcher's one visible GPU, imports, "
                         f"compile workers and CUDA initialisation before the script, "
                         f"{kind} / {base}: mean "
                         f"{statistics.mean(pre):.3f} over {len(pre)} repeats{interval(pre)}: "
                         f"{', '.join(f'{c:.3f}' for c in pre)} (launch to main() "
                         f"{statistics.mean(mains):.2f} s)")
    lines += ["", "Where a warm job's time goes (seconds, mean over ranks and repeats; "
              "`pt2cc:` phases run in a background thread except `ready_wait`, the time the "
              "compile thread waited for them):", ""]
    lines += _phase_table(reps, stores, "warm-local", "warm_local_phases", "phases")
    if not any("none_phases" in r for r in reps):  # reports older than the cold columns
        return "\n".join(lines) + "\n"
    lines += ["", "Where a cold job's time goes (the same, for the coordinated cold job beside "
              "every rank compiling; `claim`, `wait` and a claimed kind's `publish` are on the "
              "compile thread):", ""]
    lines += _phase_table(reps, stores, "every rank compiling", "none_phases", "cold_phases")
    return "\n".join(lines) + "\n"


# Student's t at 97.5 % for 1..9 degrees of freedom: a 95 % interval for a mean of few runs.
T975 = (12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26)


def interval(values: list[float]) -> str:
    """", 95 % interval a-b" for the mean of `values` (t-based; none for a single value):
    what a few noisy repeats can and cannot show against a target."""
    n = len(values)
    if n < 2:
        return ""
    half = T975[min(n - 1, len(T975)) - 1] * statistics.stdev(values) / n ** 0.5
    mean = statistics.mean(values)
    return f", 95 % interval {mean - half:.2f}-{mean + half:.2f}"


def _phase_table(reps: list[dict], stores: list[str], base: str, base_field: str,
                 field: str) -> list[str]:
    """Per phase: the mean over repeats of PyTorch alone's row and of each store's row."""
    reps = [r for r in reps if base_field in r]
    names = sorted({k for r in reps for s in stores for k in r[s][field]}
                   | {k for r in reps for k in r[base_field]})
    return harness.md_table(
        ["phase", base, *(f"ours {s}" for s in stores)],
        ([n, f"{statistics.mean(r[base_field].get(n, 0.0) for r in reps):.3f}",
          *(f"{statistics.mean(r[s][field].get(n, 0.0) for r in reps):.3f}"
            for s in stores)] for n in names), align="lr" + "r" * len(stores))


if __name__ == "__main__":
    sys.exit(main())
