"""Scaling on one host of N GPUs: N ranks on one node, and two simulated nodes.

Run it through `scripts/gpu-scale [--nproc N] [--out-dir docs/results]` (N: the visible
GPUs by default, at least 2). Every row is a real `python3 -m torch.distributed.run` job
of examples/train.py on fresh node dirs (Inductor, Triton, node-local object tier, TMPDIR),
with PT2CC_T0 taken at launch so that time to step 1 counts torchrun's start-up too.

Part 1, one node of N ranks:
  uncoordinated-cold  plain torchrun, empty caches: N concurrent compiles share the CPUs
  coordinated-cold    torchrun -m coordinator, empty store: one rank compiles each graph
  warm-store          coordinated, a fresh node, the store of coordinated-cold
  warm-local          plain torchrun again on the node of uncoordinated-cold
Part 2, two nodes of N/2 ranks on this host (two torchrun processes started together,
c10d rendezvous on loopback, each its own node dirs and half of the GPUs):
  two-nodes-cold      coordinated, an empty store of its own
  two-nodes-warm      coordinated, fresh node dirs for both nodes, the store of two-nodes-cold
  Per node: the store's object fetches (sum of `store.fetches` over the node's ranks)
  against the objects in the store. The claim: GETs per object = nodes, not ranks.

Every job runs under scripts/bench/counters.py (PyTorch's own counters at exit, for the
uncoordinated rows too), has a deadline, and a failed row is recorded and the run goes
on. Results are rewritten after every row: <out-dir>/gpu-scale.json and gpu-scale.md.
Without CUDA it runs on CPU (gloo) with N=2 and a tiny model, to check the script itself.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import harness

RESULTS, TRAIN = harness.RESULTS, harness.TRAIN
GPU_TRAIN_ARGS = "--layers 6 --d-model 768 --heads 12 --seq 512 --batch 8 --steps 3"
CPU_TRAIN_ARGS = "--layers 1 --d-model 32 --heads 2 --seq 16 --batch 2 --steps 2"


def say(msg: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def visible_gpus(count: int) -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env:
        return [d.strip() for d in env.split(",") if d.strip()][:count]
    return [str(i) for i in range(count)]


# -- one node of a job ---------------------------------------------------------------------

class Node:
    """One torchrun process (a node) of a row: its dirs, command and process."""

    def __init__(self, row_dir: Path, node_dir: Path, label: str) -> None:
        self.dir = row_dir / label  # --out and --stats-file files, log
        self.node_dir = node_dir
        self.label = label
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "log.txt"
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.killed = False

    def start(self, *, nproc: int, train_args: list[str], cache: str | None,
              t0: float, gpus: list[str] | None, rdzv: dict[str, Any] | None) -> None:
        cmd = harness.torchrun(nproc, rdzv)
        if cache is not None:
            cmd += harness.coordinator(cache, self.dir / "stats", tag=TRAIN.stem)
        cmd += [str(harness.COUNTERS_WRAPPER), str(TRAIN), *train_args,
                "--out", str(self.dir / "out")]
        env = harness.job_env(self.node_dir, {
            "OMP_NUM_THREADS": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PT2CC_BENCH_COUNTERS": str(self.dir / "counters"),
        })
        if gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        self.proc = harness.start(cmd, env, self.log, t0)

    def poll(self) -> int | None:
        if self.proc is not None and self.returncode is None:
            self.returncode = self.proc.poll()
        return self.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            harness.kill_group(self.proc)
            self.killed = True
        if self.proc is not None:
            self.returncode = self.proc.poll()

    def read(self, stem: str, nproc: int) -> dict[int, dict]:
        """This node's `<stem>.rank<R>.json` files (R: global ranks, < nproc in all)."""
        return harness.read_ranks(self.dir / stem, nproc)


def wait_nodes(name: str, nodes: list[Node], nproc: int, timeout: float,
               grace_s: float = 30.0) -> tuple[float, bool]:
    """Wait for every node; kill all at the deadline, the others `grace_s` after one fails,
    and all `grace_s` after every rank wrote its results (a rank stuck at exit: the gloo
    hang of the README's known issues). Returns (wall, whether that exit hang happened)."""
    started = time.monotonic()
    deadline = started + timeout
    failed_at: float | None = None
    done_at: float | None = None
    next_note = started + 30
    while True:
        codes = [n.poll() for n in nodes]
        if all(c is not None for c in codes):
            return time.monotonic() - started, False
        now = time.monotonic()
        if failed_at is None and any(c not in (None, 0) for c in codes):
            failed_at = now
            say(f"{name}: a node exited {codes}; the others get {grace_s:.0f} s")
        if done_at is None and sum(len(n.read("out", nproc)) for n in nodes) >= nproc:
            done_at = now
        if done_at is not None and now >= done_at + grace_s:
            say(f"{name}: every rank wrote its results {now - done_at:.0f} s ago but "
                f"{[n.label for n in nodes if n.poll() is None]} did not exit: killing "
                "(exit hang)")
            for n in nodes:
                n.kill()
            return time.monotonic() - started, True
        if now >= deadline or (failed_at is not None and now >= failed_at + grace_s):
            say(f"{name}: killing {[n.label for n in nodes if n.poll() is None]} "
                f"after {now - started:.0f} s")
            for n in nodes:
                n.kill()
            break
        if now >= next_note:
            say(f"{name}: running, {now - started:.0f} s")
            next_note += 30
        time.sleep(0.25)
    return time.monotonic() - started, False


# -- store ---------------------------------------------------------------------------------

def store_objects(store: Path) -> tuple[int, int]:
    """(objects, bytes) under <store>/v1/*/objects/*/* (snapshots are objects too)."""
    files = [p for p in glob.glob(str(store / "v1" / "*" / "objects" / "*" / "*"))
             if os.path.isfile(p)]
    return len(files), sum(os.path.getsize(p) for p in files)


# -- rows ----------------------------------------------------------------------------------

def summarize(name: str, part: str, nodes: list[Node], nproc: int, wall_s: float,
              exit_hang: bool, store: Path | None,
              base_losses: list[float] | None) -> dict[str, Any]:
    outs: dict[int, dict] = {}
    stats: dict[int, dict] = {}
    counters: dict[int, dict] = {}
    per_node = []
    for n in nodes:
        o, s, c = (n.read(stem, nproc) for stem in ("out", "stats", "counters"))
        outs.update(o)
        stats.update(s)
        counters.update(c)
        node = {"node": n.label, "exit": n.returncode, "killed": n.killed,
                "ranks": sorted(o), "store_fetches": None}
        if s:
            for key in ("fetches", "gets", "node_cache_hits", "bytes_read"):
                node[f"store_{key}"] = sum(int((x.get("store") or {}).get(key, 0))
                                           for x in s.values())
            # c10d job-store operations per rank of this node: one rank per key and node
            # claims or waits on the job store, the others wait on a node lock.
            node["job_store_ops_per_rank"] = {r: x.get("job_store_ops") for r, x in s.items()}
        per_node.append(node)
    times = [outs[r].get("time_to_step1_s") for r in sorted(outs)]
    complete = len(outs) == nproc and all(t is not None and t == t for t in times)
    clean = all(n.returncode == 0 for n in nodes)
    # A rank stuck at exit after writing its results still measured what it measured.
    ok = complete and (clean or exit_hang)
    row: dict[str, Any] = {
        "name": name, "part": part, "ok": ok, "clean_exit": clean, "exit_hang": exit_hang,
        "job_wall_s": round(wall_s, 2),
        "time_to_step1_s": round(max(times), 3) if complete else None,
        "time_to_step1_s_per_rank": {r: outs[r].get("time_to_step1_s") for r in sorted(outs)},
        "nodes": per_node,
    }

    def total(src: dict[int, dict], key: str, sub: str | None = None) -> float | None:
        if not src:  # a rank stuck at exit writes no counters: the sum is over those written
            return None
        vals = [(s.get(sub) or {}).get(key, 0) if sub else s.get(key, 0) for s in src.values()]
        return round(sum(vals), 3)

    # PyTorch's own counters: from the coordinator's stats where it ran, else counters.py's.
    src, sub = (stats, None) if stats else (counters, "inductor")
    row["fxgraph_cache_miss"] = total(src, "fxgraph_cache_miss", sub)
    row["fxgraph_cache_hit"] = total(src, "fxgraph_cache_hit", sub)
    row["coordinated"] = bool(stats)
    row["counter_ranks"] = len(src)
    if stats:
        row["waits"] = total(stats, "waits")
        row["waited_s"] = total(stats, "waited_s")
        row["published"] = total(stats, "published")
        row["store_errors"] = total(stats, "store_errors")
        row["job_store_ops"] = total(stats, "job_store_ops")
        row["store_fetches"] = sum(p["store_fetches"] or 0 for p in per_node)
        row["stats_per_rank"] = {r: {k: s.get(k) for k in (
            "fxgraph_cache_miss", "fxgraph_cache_hit", "autograd_cache_hit",
            "autograd_cache_bypass", "claimed", "loaded", "waits", "waited_s", "published",
            "store_errors", "store", "job_store_ops")} for r, s in sorted(stats.items())}
    if store is not None:
        objects, size = store_objects(store)
        row["store_objects"], row["store_bytes"] = objects, size
        if objects:
            for p in per_node:
                if p["store_fetches"] is not None:
                    p["gets_per_object"] = round(p["store_fetches"] / objects, 3)
            if "store_fetches" in row:
                row["gets_per_object"] = round(row["store_fetches"] / objects, 3)
    losses = outs.get(0, {}).get("losses")
    row["losses_rank0"] = losses
    if losses and base_losses and len(losses) == len(base_losses):
        row["loss_max_abs_diff_vs_uncoordinated"] = max(
            abs(a - b) for a, b in zip(losses, base_losses, strict=True))
    if not ok:
        row["error"] = {n.label: f"exit {n.returncode}{' (killed)' if n.killed else ''}; "
                        f"log tail:\n{harness.log_tail(n.log)}" for n in nodes}
    return row


class Runner:
    def __init__(self, args: argparse.Namespace, work: Path, report: dict[str, Any],
                 out_dir: Path, deadline: float, gpus: list[str] | None) -> None:
        self.args, self.work, self.report = args, work, report
        self.out_dir, self.deadline, self.gpus = out_dir, deadline, gpus
        self.train_args = shlex.split(args.train_args)
        self.failed: set[str] = set()

    def base_losses(self) -> list[float] | None:
        for r in self.report["rows"]:
            if r["name"] == "uncoordinated-cold":
                return r.get("losses_rank0")
        return None

    def skip(self, name: str, part: str, why: str) -> None:
        say(f"{name}: skipped: {why}")
        self.failed.add(name)
        self.add({"name": name, "part": part, "ok": False, "skipped": why})

    def add(self, row: dict[str, Any]) -> None:
        self.report["rows"].append(row)
        write(self.report, self.out_dir)

    def row(self, name: str, part: str, node_names: list[str], store: Path | None,
            needs: str | None = None) -> None:
        if self.args.rows and name not in self.args.rows.split(","):
            return
        if needs in self.failed:
            return self.skip(name, part, f"{needs} failed")
        left = self.deadline - time.monotonic()
        if left < self.args.min_job_s:
            return self.skip(name, part, f"{left:.0f} s of the time budget left")
        timeout = min(self.args.job_timeout_s, left)
        nproc = self.args.nproc
        row_dir = self.work / "rows" / name
        nodes = [Node(row_dir, self.work / "nodes" / n, f"node{i}")
                 for i, n in enumerate(node_names)]
        cache = str(store) if store is not None else None
        say(f"{name}: starting {len(nodes)} node(s) x {nproc // len(nodes)} ranks"
            f"{' (coordinated)' if cache else ''}, deadline {timeout:.0f} s")
        t0 = time.time()
        try:
            if len(nodes) == 1:
                nodes[0].start(nproc=nproc, train_args=self.train_args, cache=cache, t0=t0,
                               gpus=self.gpus, rdzv=None)
            else:
                half = nproc // 2
                rdzv = {"nnodes": 2, "port": harness.free_port(),
                        "id": f"{name}-{uuid.uuid4().hex[:8]}"}
                for i, node in enumerate(nodes):
                    gpus = self.gpus[i * half:(i + 1) * half] if self.gpus else None
                    node.start(nproc=half, train_args=self.train_args, cache=cache, t0=t0,
                               gpus=gpus, rdzv={**rdzv, "rank": i})
            wall, hang = wait_nodes(name, nodes, nproc, timeout, self.args.exit_grace_s)
            row = summarize(name, part, nodes, nproc, wall, hang, store, self.base_losses())
        except Exception as exc:  # noqa: BLE001 - one broken row must not end the run
            for n in nodes:
                n.kill()
            row = {"name": name, "part": part, "ok": False,
                   "error": f"{type(exc).__name__}: {exc}"}
        if not row["ok"]:
            self.failed.add(name)
        self.add(row)
        t = row.get("time_to_step1_s")
        extra = ""
        if row.get("fxgraph_cache_miss") is not None:
            extra += f", fx miss {row['fxgraph_cache_miss']:.0f} hit {row['fxgraph_cache_hit']:.0f}"
        if "store_fetches" in row:
            extra += (f", fetches {[p['store_fetches'] for p in row['nodes']]}"
                      f" of {row.get('store_objects')} objects")
        say(f"{name}: " + (f"step 1 at {t:.2f} s" if t else "FAILED")
            + f" (wall {row.get('job_wall_s', 0):.1f} s{extra})")


# -- report --------------------------------------------------------------------------------

def _f(v: Any, fmt: str = "{:.2f}") -> str:
    if v is None:
        return "n/a"
    return fmt.format(v) if isinstance(v, float) else str(v)


def _cells(r: dict[str, Any], n: int) -> list[str]:
    """A row's cells in the table of its part."""
    if r.get("skipped"):
        return [r["name"], f"skipped: {r['skipped']}", *[""] * 7]
    t1 = r.get("time_to_step1_s")
    killed = any(x.get("killed") for x in r.get("nodes", []))
    state = f"{t1:.2f} s" if t1 else ("killed at its deadline" if killed else "FAILED")
    if r.get("exit_hang"):
        state += " (a rank hung at exit: killed)"
    if r.get("counter_ranks") is not None and r.get("counter_ranks") != n:
        state += f" (counters of {r['counter_ranks']} of {n} ranks)"
    fetch = "n/a"
    if "store_fetches" in r:
        per = " + ".join(str(p["store_fetches"]) for p in r["nodes"])
        fetch = f"{per} / {r.get('store_objects')}"
    return [r["name"], state, _f(r.get("fxgraph_cache_miss"), "{:.0f}"),
            _f(r.get("fxgraph_cache_hit"), "{:.0f}"), _f(r.get("waits"), "{:.0f}"),
            _f(r.get("waited_s"), "{:.1f} s"), fetch,
            _f(r.get("loss_max_abs_diff_vs_uncoordinated"), "{:.2e}"),
            _f(r.get("job_wall_s"), "{:.1f} s")]


def _per_node(r: dict[str, Any], n: int) -> str:
    """A two-node row's fetches per node, against the claim: at most once per node."""
    objs = r["store_objects"]
    per = "; ".join(
        f"{p['node']} (ranks {','.join(map(str, p['ranks']))}): "
        f"{p['store_fetches']} fetches = {p.get('gets_per_object', 'n/a')} per "
        f"object, {p.get('store_bytes_read', 0) / 1e6:.1f} MB read, "
        f"{p.get('store_node_cache_hits', 0)} node-tier hits"
        for p in r["nodes"])
    worst = max((p["store_fetches"] or 0) / objs for p in r["nodes"])
    return (f"- {r['name']}: {objs} objects ({r.get('store_bytes', 0) / 1e6:.1f} MB) "
            f"in the store; {per}. Claim (each object fetched at most once per node, "
            f"whatever the {n // 2} rank(s) per node): "
            f"{'holds' if worst <= 1 else 'does NOT hold'} (max {worst:.2f}).")


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    n = report["nproc"]
    lines = [
        "# Scaling on one host: N ranks, and two simulated nodes",
        "",
        f"{report['card']}; N = {n} ranks; torch {m.get('torch')} (CUDA {m.get('cuda_runtime')}),"
        f" triton {m.get('triton')}, Python {m.get('python')}, {m.get('cpu_count')} CPUs; "
        f"{report['time']}; written by `scripts/gpu-scale`"
        + (f" in {report['wall_s']:.0f} s." if report.get("wall_s") else " (in progress)."),
        "",
        f"examples/train.py `{report['train_args']}`. Time to step 1 = when the slowest rank "
        "finished step 1, counted from the launch. Counters are sums over all ranks.",
        "",
    ]
    lines += [f"> {note}" for note in report.get("notes", [])]
    if report.get("notes"):
        lines.append("")
    rows = report["rows"]
    head = ["row", "time to step 1", "FX graphs compiled", "FX graphs loaded", "waits", "waited",
            "store fetches / objects", "max abs loss diff (rank 0)", "job wall"]
    parts = [("one", f"## One node, {n} ranks"),
             ("two", f"## Two simulated nodes of {n // 2} rank(s) each on this host")]
    for part, title in parts:
        prs = [r for r in rows if r["part"] == part]
        if not prs:
            continue
        lines += [title, "", *harness.md_table(head, (_cells(r, n) for r in prs), spaced=True),
                  ""]
        if part == "two":
            lines += [_per_node(r, n) for r in prs if r.get("store_objects")
                      and not r.get("skipped") and "store_fetches" in r]
            lines.append("")
    ratios = report.get("ratios") or {}
    if ratios:
        lines += ["## Ratios", ""]
        lines += [f"- {k}: {_f(v, '{:.3f}')}" for k, v in ratios.items()]
        lines.append("")
    lines += ["Store fetches count objects downloaded from the store (not served by the "
              "node-local tier), summed over a node's ranks; in part 1 the sum is over the one "
              "node. Loss differences are against uncoordinated-cold's rank 0."]
    return "\n".join(lines) + "\n"


def ratios(report: dict[str, Any]) -> dict[str, float | None]:
    t = {r["name"]: r.get("time_to_step1_s") for r in report["rows"]}

    def q(a: str, b: str) -> float | None:
        return round(t[a] / t[b], 3) if t.get(a) and t.get(b) else None

    return {
        "coordinated-cold / uncoordinated-cold": q("coordinated-cold", "uncoordinated-cold"),
        "warm-store / warm-local": q("warm-store", "warm-local"),
        "warm-store / coordinated-cold": q("warm-store", "coordinated-cold"),
        "two-nodes-cold / coordinated-cold": q("two-nodes-cold", "coordinated-cold"),
        "two-nodes-warm / warm-store": q("two-nodes-warm", "warm-store"),
    }


def write(report: dict[str, Any], out_dir: Path) -> None:
    report["ratios"] = ratios(report)
    harness.write_atomic(out_dir / "gpu-scale.json",
                         json.dumps(report, indent=1, default=str) + "\n")
    harness.write_atomic(out_dir / "gpu-scale.md", markdown(report))


# -- main ----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=None,
                   help="ranks in all (default: the visible GPUs; 2 without CUDA)")
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--train-args", default=None,
                   help=f"examples/train.py arguments (default GPU: {GPU_TRAIN_ARGS!r}; "
                   f"CPU: {CPU_TRAIN_ARGS!r})")
    p.add_argument("--budget-s", type=float, default=350.0,
                   help="the whole run's time budget (jobs end by then; a kill takes <= 40 s)")
    p.add_argument("--job-timeout-s", type=float, default=170.0)
    p.add_argument("--min-job-s", type=float, default=25.0,
                   help="a row with less of the budget left is skipped")
    p.add_argument("--exit-grace-s", type=float, default=45.0,
                   help="kill a job this long after every rank wrote its results (a rank "
                   "hung at exit); rank 0 publishes the snapshot after them: keep it generous")
    p.add_argument("--rows", default="", help="comma-separated rows to run (default: all)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, caches)")
    args = p.parse_args(argv)

    t_start = time.monotonic()
    os.environ.update(harness.SAFE_ENV)
    m = harness.gpu_machine_info()
    cuda_count = int(m.get("gpu_count") or 0)
    notes: list[str] = []
    if cuda_count:
        card = f"{cuda_count}x {m.get('gpu_name')} (driver {m.get('driver')})"
        nproc = args.nproc or cuda_count
        if nproc > cuda_count:
            p.error(f"--nproc {nproc}: only {cuda_count} GPUs are visible")
        gpus: list[str] | None = visible_gpus(nproc)
        if cuda_count < 4:
            notes.append(f"This machine has {cuda_count} GPUs, fewer than 4: part 1 has "
                         f"{nproc} ranks, and part 2 is two nodes of {nproc // 2} GPU each.")
    else:
        card = "CPU only (no CUDA: gloo, a check of the script, not a GPU result)"
        nproc = args.nproc or 2
        gpus = None
        notes.append("No CUDA: CPU processes with gloo; these numbers check the script only.")
    if nproc < 2:
        p.error("N must be >= 2")
    args.nproc = nproc
    if args.train_args is None:
        args.train_args = GPU_TRAIN_ARGS if cuda_count else CPU_TRAIN_ARGS

    out_dir = Path(args.out_dir)
    work = Path(tempfile.mkdtemp(prefix="gpu-scale-"))
    report: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv[1:], "machine": m,
        "card": card, "nproc": nproc, "train_args": args.train_args, "notes": notes,
        "work_dir": str(work), "rows": [],
    }
    say(f"{card}; N={nproc}; train.py {args.train_args}; work dir {work}")
    write(report, out_dir)
    deadline = t_start + args.budget_s
    run = Runner(args, work, report, out_dir, deadline, gpus)
    one, two_store = work / "store-one", work / "store-two"

    run.row("uncoordinated-cold", "one", ["plain"], None)
    run.row("coordinated-cold", "one", ["coord-cold"], one)
    run.row("warm-store", "one", ["coord-fresh"], one, needs="coordinated-cold")
    run.row("warm-local", "one", ["plain"], None, needs="uncoordinated-cold")
    if nproc % 2:
        for name in ("two-nodes-cold", "two-nodes-warm"):
            run.skip(name, "two", f"N={nproc} is odd: no two equal nodes")
    else:
        run.row("two-nodes-cold", "two", ["two-cold-a", "two-cold-b"], two_store)
        run.row("two-nodes-warm", "two", ["two-warm-a", "two-warm-b"], two_store,
                needs="two-nodes-cold")

    report["wall_s"] = round(time.monotonic() - t_start, 1)
    write(report, out_dir)
    print(markdown(report), flush=True)
    say(f"wrote {out_dir / 'gpu-scale.json'} and {out_dir / 'gpu-scale.md'}")
    if args.keep:
        say(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    ran = [r for r in report["rows"] if not r.get("skipped")]
    return 0 if ran and all(r["ok"] for r in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
