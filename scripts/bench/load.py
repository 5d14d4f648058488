"""Job-store load test at cluster size: the real single-flight against one real TCPStore.

The TCPStore server runs in a process of its own (as torchrun's agent hosts it). Ranks are
threads; each worker process hosts several simulated nodes of `--ranks-per-node` ranks,
each node with its own node dir (the node locks are `flock`s, which exclude each other
between open files even within one process). Compiles are sleeps drawn from a spread of
seconds to tens of seconds, one key much longer. Every rank goes through the same keys
in order: claim; the claimant sleeps, then marks the key done; the others wait.

Two designs run side by side, on the same server, keys and delays:
- `node-local` (the coordinator's SingleFlight): per key, one rank per node deals with
  the job store (a blocking wait plus a heartbeat read every stale_after/4); the node's
  other ranks wait on the node lock.
- `polling` (the design before it): every waiting rank polls `check` (done), `check`
  (owner) and `add` (heartbeat) every 50 ms for as long as the compile lasts.

Per run: job-store operations (total, per second, per key; the slope per node), release
latency from "done" to each waiter returning (p50, p99), and the set+get latency of a
probe client on the same store during the run (it stands for torchrun's rendezvous).

    python scripts/bench/load.py --runs 64x8,256x8,1024x8,256x32 --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

KIND = "fxgraph"
POLL_S = 0.05
DESIGNS = ("node-local", "polling")
RANKS_PER_PROCESS = 64  # default of --ranks-per-process; reports older than it lack it


def delays(keys: int, seed: int) -> list[float]:
    """Seconds per fake compile: lognormal around 3 s, the last key ~8x the median."""
    rng = random.Random(seed)
    out = [min(20.0, max(0.5, rng.lognormvariate(1.1, 0.5))) for _ in range(keys)]
    out[-1] = 25.0
    return out


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def connect(port: int):
    import torch.distributed as dist

    return dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=300),
                         wait_for_workers=False)


class Counted:
    """A TCPStore client that counts the operations made through it."""

    def __init__(self, store) -> None:
        self._store = store
        self.ops = 0

    def __getattr__(self, name: str):
        fn = getattr(self._store, name)

        def call(*args, **kwargs):
            self.ops += 1
            return fn(*args, **kwargs)

        return call


# -- the two designs, one rank each ------------------------------------------------------------


def node_local_rank(a: argparse.Namespace, rank: int, node_dir: str, keys: list[float],
                    prefix: str) -> dict:
    import torch.distributed as dist

    from coordinator.single_flight import JobStore, SingleFlight, WaitResult

    job = JobStore(*(dist.PrefixStore(prefix, connect(a.port)) for _ in range(2)))
    flight = SingleFlight(job, rank, wait_timeout_s=600, stale_after_s=a.stale_after,
                          heartbeat_s=2.0, node_dir=node_dir)
    side = connect(a.port)  # the bench's own bookkeeping: not counted
    ready(side)
    released, compiled = [], 0
    for k, delay in enumerate(keys):
        key = f"pt2:fake::k{k:03d}:c1"
        if flight.claim(KIND, key):
            time.sleep(delay)
            side.set(f"bench/{prefix}done/{k}", repr(time.time()))
            flight.finish(KIND, key)
            compiled += 1
        else:
            result = flight.wait(KIND, key)
            done_at = time.time()
            assert result is WaitResult.DONE, result
            released.append(done_at - float(side.get(f"bench/{prefix}done/{k}").decode()))
    flight.close()
    return {"ops": flight.job_store_ops, "released": released, "compiled": compiled}


def polling_rank(a: argparse.Namespace, rank: int, node_dir: str, keys: list[float],
                 prefix: str) -> dict:
    """Every rank on the job store: claim by `add`, then check/check/add every 50 ms."""
    import torch.distributed as dist

    main = Counted(dist.PrefixStore(prefix, connect(a.port)))
    side = connect(a.port)
    ready(side)
    released, compiled = [], 0
    for k, delay in enumerate(keys):
        name = f"{KIND}/pt2:fake::k{k:03d}:c1"
        if main.add(f"claim/{name}", 1) == 1:
            main.set(f"owner/{name}", str(rank))
            stop = threading.Event()
            beat = threading.Thread(target=_beat, args=(main, rank, stop), daemon=True)
            beat.start()
            time.sleep(delay)
            side.set(f"bench/{prefix}done/{k}", repr(time.time()))
            main.set(f"done/{name}", str(rank))
            stop.set()
            compiled += 1
            continue
        while not main.check([f"done/{name}"]):
            main.check([f"owner/{name}"])
            main.add("hb/0", 0)
            time.sleep(POLL_S)
        released.append(time.time() - float(side.get(f"bench/{prefix}done/{k}").decode()))
    return {"ops": main.ops, "released": released, "compiled": compiled}


def _beat(main: Counted, rank: int, stop: threading.Event) -> None:
    while not stop.wait(2.0):
        main.add(f"hb/{rank}", 1)


def ready(side) -> None:
    side.add("bench/ready", 1)
    side.wait(["bench/go"])


def worker_main(a: argparse.Namespace) -> None:
    """One process: `--nodes-here` simulated nodes of `--ranks-per-node` rank threads."""
    keys = json.loads(a.delays)
    design = node_local_rank if a.design == "node-local" else polling_rank
    out: list[dict] = []
    lock = threading.Lock()

    def run(rank: int, node_dir: str) -> None:
        result = design(a, rank, node_dir, keys, f"pt2cc/{a.run_id}/0/")
        with lock:
            out.append(result)

    threads = []
    for n in range(a.nodes_here):
        node = a.first_node + n
        node_dir = Path(a.work) / f"node{node}"
        node_dir.mkdir(parents=True, exist_ok=True)
        for r in range(a.ranks_per_node):
            threads.append(threading.Thread(
                target=run, args=(node * a.ranks_per_node + r, str(node_dir)), daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    Path(a.out).write_text(json.dumps(out))


# -- the driver -----------------------------------------------------------------------------------


def start_server() -> tuple[subprocess.Popen, int]:
    """A TCPStore server in its own process (as torchrun's agent hosts it); its port."""
    code = ("import sys, time, torch.distributed as d; from datetime import timedelta; "
            "s = d.TCPStore('127.0.0.1', 0, is_master=True, wait_for_workers=False, "
            "timeout=timedelta(seconds=600)); print(s.port, flush=True); time.sleep(86400)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def probe(port: int, stop: threading.Event, samples: list[float]) -> None:
    """An independent client: set + get every 10 ms, timed."""
    client = connect(port)
    i = 0
    while not stop.wait(0.01):
        t = time.perf_counter()
        client.set(f"probe/{i % 16}", "x")
        client.get(f"probe/{i % 16}")
        samples.append(time.perf_counter() - t)
        i += 1


def run_one(a: argparse.Namespace, design: str, ranks: int, per_node: int, keys: list[float],
            work: Path) -> dict:
    server, port = start_server()
    try:
        nodes = ranks // per_node
        nodes_per_proc = max(1, min(nodes, a.ranks_per_process // per_node))
        run_dir = work / f"{design}-{ranks}x{per_node}"
        procs, outs = [], []
        for first in range(0, nodes, nodes_per_proc):
            out = run_dir / f"out{first}.json"
            outs.append(out)
            procs.append(subprocess.Popen([
                sys.executable, __file__, "--worker", "--design", design, "--port", str(port),
                "--run-id", f"{design}-{ranks}", "--work", str(run_dir),
                "--first-node", str(first), "--nodes-here", str(min(nodes_per_proc,
                                                                     nodes - first)),
                "--ranks-per-node", str(per_node), "--delays", json.dumps(keys),
                "--stale-after", str(a.stale_after), "--out", str(out)]))
        side = connect(port)
        deadline = time.monotonic() + 600
        while side.add("bench/ready", 0) < ranks:
            if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
                raise RuntimeError(f"{design} {ranks}: workers did not start")
            time.sleep(0.2)
        samples: list[float] = []
        stop = threading.Event()
        prober = threading.Thread(target=probe, args=(port, stop, samples), daemon=True)
        prober.start()
        t0 = time.monotonic()
        side.set("bench/go", "1")
        for p in procs:
            if p.wait() != 0:
                raise RuntimeError(f"{design} {ranks}: a worker failed ({p.returncode})")
        wall = time.monotonic() - t0
        stop.set()
        prober.join()
    finally:
        server.kill()
    results = [r for out in outs for r in json.loads(out.read_text())]
    ops = sum(r["ops"] for r in results)
    released = [x for r in results for x in r["released"]]
    ms = lambda v: None if v is None else round(v * 1000, 2)  # noqa: E731
    return {
        "design": design, "ranks": ranks, "ranks_per_node": per_node, "nodes": nodes,
        "keys": len(keys), "compile_s": [round(d, 2) for d in keys], "wall_s": round(wall, 2),
        "compiles_per_key": sum(r["compiled"] for r in results) / len(keys),
        "job_store_ops": ops, "ops_per_s": round(ops / wall, 1),
        "ops_per_key": round(ops / len(keys), 1),
        "ops_per_key_per_node": round(ops / len(keys) / nodes, 2),
        "release_p50_ms": ms(percentile(released, 50)),
        "release_p99_ms": ms(percentile(released, 99)),
        "release_max_ms": ms(max(released) if released else None),
        "probe_samples": len(samples),
        "probe_p50_ms": ms(percentile(samples, 50)), "probe_p99_ms": ms(percentile(samples, 99)),
        "probe_max_ms": ms(max(samples) if samples else None),
    }


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over xs."""
    if len(xs) < 2:
        return None
    mx, my = statistics.mean(xs), statistics.mean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return None if den == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


def render(report: dict, md: Path, png: Path | None, label: str) -> None:
    """The tables (and with matplotlib, the chart) of a saved report."""
    rows, fits, machine = report["rows"], report["fits"], report["machine"]
    cols = ["design", "ranks", "ranks_per_node", "nodes", "wall_s", "compiles_per_key",
            "job_store_ops", "ops_per_s", "ops_per_key", "ops_per_key_per_node",
            "release_p50_ms", "release_p99_ms", "probe_p50_ms", "probe_p99_ms", "probe_max_ms"]
    lines = [f"# Job-store load test ({label})", "",
             f"`scripts/bench/load.py` on {label}: {machine['cpus']} CPUs, torch "
             f"{machine['torch']}, Python {machine['python']}. One TCPStore server process; "
             f"ranks are threads, {_processes(machine, rows)}; {rows[0]['keys']} keys with fake "
             "compiles of "
             f"{', '.join(f'{d:g}' for d in rows[0]['compile_s'])} s.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    rows = sorted(rows, key=lambda r: (r["ranks_per_node"], r["ranks"], r["design"]))
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    lines += ["", "Least-squares slopes of job-store operations per key (8 ranks per node):", ""]
    lines += [f"- {d}: {f['ops_per_key_per_node_slope']:.2f} per node, "
              f"{f['ops_per_key_per_rank_slope']:.2f} per rank" for d, f in fits.items()]
    md.write_text("\n".join(lines) + "\n")
    if png is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for design, marker in zip(DESIGNS, "os", strict=True):
        rs = sorted((r for r in rows if r["design"] == design and r["ranks_per_node"] == 8),
                    key=lambda r: r["ranks"])
        xs = [r["ranks"] for r in rs]
        for ax, col, title in zip(axes, ("ops_per_key", "probe_p99_ms", "release_p99_ms"),
                                  ("job-store ops per key", "probe set+get p99 (ms)",
                                   "release p99 (ms)"), strict=True):
            ax.plot(xs, [r[col] for r in rs], marker=marker, label=design)
            ax.set_title(title)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("ranks (8 per node)")
    axes[0].legend()
    fig.suptitle(f"job-store load, node-local single-flight vs polling ({label})")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def _processes(machine: dict, rows: list[dict]) -> str:
    """How run_one spread the ranks: nodes per process = ranks per process // per node."""
    per = machine.get("ranks_per_process", RANKS_PER_PROCESS)
    if all(per // r["ranks_per_node"] <= 1 for r in rows):
        return "one process per simulated node"
    return f"up to {per} per process (whole nodes)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="64x8,256x8,1024x8,256x32",
                   help="RANKSxRANKS_PER_NODE, comma-separated")
    p.add_argument("--designs", default=",".join(DESIGNS))
    p.add_argument("--keys", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="multiply every fake compile time (a quick try: 0.1)")
    p.add_argument("--stale-after", type=float, default=30.0)
    p.add_argument("--ranks-per-process", type=int, default=RANKS_PER_PROCESS)
    p.add_argument("--json", default=None)
    p.add_argument("--render", nargs=3, metavar=("JSON", "MD", "LABEL"),
                   help="only write the tables of a saved report (and MD's .png)")
    # worker mode
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--design", "--run-id", "--work", "--delays", "--out"):
        p.add_argument(name, help=argparse.SUPPRESS)
    for name in ("--port", "--first-node", "--nodes-here", "--ranks-per-node"):
        p.add_argument(name, type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        worker_main(a)
        return 0
    if a.render:
        src, md, label = a.render
        try:
            import matplotlib  # noqa: F401
            png: Path | None = Path(md).with_suffix(".png")
        except ImportError:
            png = None
        render(json.loads(Path(src).read_text()), Path(md), png, label)
        return 0
    keys = [d * a.time_scale for d in delays(a.keys, a.seed)]
    work = Path(tempfile.mkdtemp(prefix="bench-load-"))
    rows = []
    for spec in a.runs.split(","):
        ranks, per_node = (int(x) for x in spec.split("x"))
        for design in a.designs.split(","):
            row = run_one(a, design, ranks, per_node, keys, work)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if a.json:  # after every run: a run cut short keeps what it measured
                Path(a.json).write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    fits = {}
    for design in a.designs.split(","):
        by8 = [r for r in rows if r["design"] == design and r["ranks_per_node"] == 8]
        fits[design] = {"ops_per_key_per_node_slope": slope([r["nodes"] for r in by8],
                                                            [r["ops_per_key"] for r in by8]),
                        "ops_per_key_per_rank_slope": slope([r["ranks"] for r in by8],
                                                            [r["ops_per_key"] for r in by8])}
    machine = {"cpus": os.cpu_count(), "python": sys.version.split()[0],
               "ranks_per_process": a.ranks_per_process}
    import torch

    machine["torch"] = torch.__version__
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": machine, "rows": rows, "fits": fits},
                                           indent=1) + "\n")
    print(json.dumps({"fits": fits, "machine": machine}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
