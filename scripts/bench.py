"""Time to first step beside PyTorch's own ways of sharing compiled artifacts, in one run.

Every row is a real ``torchrun --standalone`` job of examples/train.py (DDP over
``torch.compile``; gloo on CPU) on the same model and ranks; a "fresh node" is a new
TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR, PT2CC_NODE_CACHE_DIR and TMPDIR.

  none                 every rank compiles, fresh caches (what users have today)
  warm-local           none's job again on none's warm caches: the floor
  preimport-cold/-warm none and warm-local with what our launcher imports and starts before
                       the script, and nothing else of ours (scripts/bench/preimport.py;
                       only when named in --rows)
  redis-cold/-warm     PyTorch's Redis remote caches (FX graph, AOTAutograd, autotune) on a
                       redis-server on loopback; the warm job runs on a fresh node
  megacache-broadcast  Mega-Cache by hand, obvious form: rank 0 compiles, broadcasts the
                       bytes; deadlocks under DDP, so it stops at --deadline (killed)
  megacache-save/-load every rank compiles, rank 0 saves after step 1; the next job on a
                       fresh node loads the file before its first step
  ours-cold/-warm-file the coordinator on a file:// store (warm: fresh node, same store)
  ours-cold/-warm-s3   the same on s3:// (moto's server on loopback)

Measured per row: time from launch until every rank finished step 1; CPU seconds of the
worker process trees (scripts/bench/cpu.py: user+sys of each worker and the compilers
it ran, summed over ranks), and "compile CPU" = that minus warm-local's (import, load,
steps); bytes read from the store and store requests per rank; ratio to the floor.
Then the fake-compile scale test (scripts/bench/scale.py). Writes
docs/results/bench-<machine>.json, .md and .png.

    .venv/bin/python scripts/bench.py [--machine NAME] [--rows a,b] [--no-scale]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness

REPO, BENCH, RESULTS = harness.REPO, harness.BENCH, harness.RESULTS
TRAIN = "examples/train.py"
ROWS = (
    "none", "warm-local", "preimport-cold", "preimport-warm", "redis-cold", "redis-warm",
    "megacache-broadcast",
    "megacache-save", "megacache-load", "ours-cold-file", "ours-warm-file",
    "ours-cold-s3", "ours-warm-s3",
)
NEEDS = {"warm-local": "none", "preimport-warm": "none", "redis-warm": "redis-cold",
         "megacache-load": "megacache-save", "ours-warm-file": "ours-cold-file",
         "ours-warm-s3": "ours-cold-s3"}
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


class Servers:
    """redis-server and moto's S3 server on loopback, started on demand, stopped at exit."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[subprocess.Popen] = []
        self.redis_port: int | None = None
        self.s3_endpoint: str | None = None
        self.store_url: str | None = None

    def redis(self) -> int:
        if self.redis_port is None:
            exe = shutil.which("redis-server")
            if exe is None:
                raise RuntimeError("redis-server not found: apt-get install redis-server")
            port = harness.free_port()
            p = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", str(self.work)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.procs.append(p)
            wait_port(port, p, "redis-server")
            self.redis_port = port
        return self.redis_port

    def redis_client(self) -> Any:
        import redis  # pip install redis (PyTorch's Redis caches need it in the workers too)

        return redis.Redis(host="127.0.0.1", port=self.redis())

    def s3(self) -> str:
        if self.s3_endpoint is None:
            port = harness.free_port()
            p = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                  str(port)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            self.procs.append(p)
            wait_port(port, p, "moto server")
            self.s3_endpoint = f"http://127.0.0.1:{port}"
        return self.s3_endpoint

    def s3_store(self) -> str:
        """The server's one store URL: rows run again on it (bench_warm) find it filled."""
        if self.store_url is None:
            self.store_url = self.s3_bucket(f"bench-{os.getpid()}")
        return self.store_url

    def s3_bucket(self, name: str) -> str:
        import s3fs

        os.environ.update(S3_ENV, AWS_ENDPOINT_URL=self.s3())
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": self.s3()})
        fs.mkdir(name)
        return f"s3://{name}/cache"

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def run_job(args: argparse.Namespace, name: str, work: Path, node: Path, target: list[str],
            env_extra: dict[str, str], timeout: float) -> dict:
    """One torchrun job; every worker runs under scripts/bench/cpu.py."""
    jobdir = work / "jobs" / name
    jobdir.mkdir(parents=True)
    threads = args.compile_threads
    env = harness.job_env(node, {
        **({} if threads == "default" else {"TORCHINDUCTOR_COMPILE_THREADS": threads}),
        "PT2CC_BENCH_CPU": str(jobdir / "cpu"),
        **({"PT2CC_BENCH_PROFILE": str(jobdir / "profile")} if getattr(args, "profile", False)
           else {}),
        **({"PT2CC_BENCH_SAMPLE": str(jobdir / "sample")} if getattr(args, "sample", False)
           else {}),
        **env_extra,
    })
    py, n = sys.executable, args.nproc
    cmd = [*harness.torchrun(n), "--no-python", py, str(BENCH / "cpu.py"), "--", py, *target,
           *shlex.split(args.train_args), "--steps", str(args.steps),
           "--out", str(jobdir / "out")]
    log = jobdir / "log.txt"
    print(f"[{name}] {shlex.join(cmd)}", flush=True)
    rc, wall = harness.run(cmd, env, log, timeout, grace_s=20)
    outs = harness.read_ranks(jobdir / "out", n)
    step1 = harness.time_to_step1(outs, n)  # the slowest rank
    ok = rc == 0 and step1 is not None
    res: dict[str, Any] = {
        "name": name, "ok": ok, "exit": rc, "wall_s": round(wall, 3), "log": str(log),
        "time_to_step1_s": step1 if ok else None,
        "time_to_step1_per_rank_s": harness.by_rank(outs, n, "time_to_step1_s"),
        "cpu_s_per_rank": harness.by_rank(harness.read_ranks(jobdir / "cpu", n), n, "cpu_s"),
        "coordinator_stats": list(harness.read_ranks(jobdir / "stats", n).values()),
        "losses_rank0": outs.get(0, {}).get("losses"),
    }
    if rc is None:
        res["status"] = f"deadline: killed after {timeout:.0f} s"
        res["error"] = harness.worker_error(log, 6)
    elif not ok:
        res["status"] = f"failed (exit {rc})"
        res["error"] = harness.worker_error(log, 12)
    else:
        res["status"] = "ok"
    return res


def _store_figures(res: dict, nproc: int) -> None:
    """bytes read from the store and requests per rank, from the coordinator's counters."""
    stats = [s.get("store", {}) for s in res["coordinator_stats"]]
    if not stats:
        return
    tot = {k: sum(s.get(k, 0) for s in stats) for k in ("gets", "fetches", "puts", "bytes_read",
                                                          "bytes_written", "node_cache_hits")}
    res["store"] = tot
    res["store_bytes_read"] = tot["bytes_read"]
    # index lookups (one LIST each) + object downloads + publishes (object and entry PUT)
    res["store_requests_per_rank"] = (tot["gets"] + tot["fetches"] + 2 * tot["puts"]) / nproc
    keys = ("fxgraph_cache_miss", "fxgraph_cache_hit", "waits", "waited_s", "published",
            "claimed", "loaded", "materialized", "store_errors")
    res["coordinator"] = {k: sum(s.get(k, 0) for s in res["coordinator_stats"]) for k in keys}


def add_job_options(p: argparse.ArgumentParser) -> None:
    """What every row of bench.py and bench_warm.py runs with."""
    p.add_argument("--ours-args", default="", help="more options of ours for the ours-* "
                   'rows, e.g. "--no-snapshot" (to take a part of ours away)')
    p.add_argument("--compile-threads", metavar="N|default", help="Inductor's compile workers "
                   "per rank (TORCHINDUCTOR_COMPILE_THREADS) in every row; default: 1 without "
                   "a GPU (2 ranks on 2 cores leave a pool no core to use), Inductor's own "
                   "choice with one (what users run: 32 on a 64-core host)")


def resolve_compile_threads(args: argparse.Namespace, info: dict[str, Any]) -> None:
    if args.compile_threads is None:
        args.compile_threads = "default" if info.get("cuda_device") else "1"


def run_rows(args: argparse.Namespace, work: Path, servers: Servers) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    # In ROWS' order unless the caller orders them (a warm row still after its cold one).
    selected = [r for r in getattr(args, "row_order", None) or ROWS if r in args.rows.split(",")]
    if any(NEEDS.get(r) in selected[i:] for i, r in enumerate(selected)):
        raise ValueError(f"rows out of order: each warm row after its cold one ({selected})")
    plain = work / "node-none"  # none and warm-local share it
    mega_file = work / "megacache.bin"
    for name in selected:
        if NEEDS.get(name) and NEEDS[name] in selected and not rows[NEEDS[name]]["ok"]:
            rows[name] = {"name": name, "ok": False, "status": f"skipped: {NEEDS[name]} failed"}
            continue
        # none's own warm rows run on its node; every other row on a fresh one
        node = plain if "none" in (name, NEEDS.get(name)) else work / f"node-{name}"
        env: dict[str, str] = {}
        target = [TRAIN]
        timeout = args.timeout
        redis_before = None
        if name.startswith("redis"):
            client = servers.redis_client()
            env.update(TORCHINDUCTOR_FX_GRAPH_REMOTE_CACHE="1",
                       TORCHINDUCTOR_AUTOGRAD_REMOTE_CACHE="1",
                       TORCHINDUCTOR_AUTOTUNE_REMOTE_CACHE="1",
                       TORCHINDUCTOR_REDIS_HOST="127.0.0.1",
                       TORCHINDUCTOR_REDIS_PORT=str(servers.redis()))
            client.config_resetstat()
            redis_before = client
        elif name.startswith("preimport"):
            target = [str(BENCH / "preimport.py"), TRAIN]
        elif name.startswith("megacache"):
            mode = name.split("-")[1]
            target = [str(BENCH / "megacache_job.py"), "--mode", mode, "--file", str(mega_file)]
            if mode == "broadcast":
                # Rank 0 gets the time it needs to compile alone (none's step 1), then
                # the deadline: a job still running by then is not slow but stuck.
                timeout = args.deadline + (rows.get("none", {}).get("time_to_step1_s") or 0)
        elif name.startswith("ours"):
            if name.endswith("s3"):
                url = servers.s3_store()
                env.update(S3_ENV, AWS_ENDPOINT_URL=servers.s3())
            else:
                url = (work / "store").as_uri()
            jobdir = work / "jobs" / name
            target = ["-m", "coordinator", "--cache", url, "--stats-file", str(jobdir / "stats"),
                      "--tag", "train", *shlex.split(args.ours_args), TRAIN]
            if getattr(args, "trace_dir", None):  # the job's timeline, kept past the work dir
                target[-1:-1] = ["--trace", str(Path(args.trace_dir) / name)]
        # What earlier jobs left to write back (on CPU, 150 MB precompiled headers) goes to
        # disk before this job starts: behind it, the job's own writes were throttled (a
        # 150 MB write took 0.03-1.1 s on cpu2), whichever side ran after a heavy row.
        os.sync()
        res = run_job(args, name, work, node, target, env, timeout)
        if redis_before is not None:
            info = redis_before.info("stats")
            res["store_bytes_read"] = int(info["total_net_output_bytes"])
            res["store_requests_per_rank"] = int(info["total_commands_processed"]) / args.nproc
            res["redis"] = {k: info.get(k) for k in ("total_commands_processed",
                            "total_net_input_bytes", "total_net_output_bytes",
                            "keyspace_hits", "keyspace_misses")}
        elif name.startswith("megacache"):
            outs = harness.read_ranks(work / "jobs" / name / "out", args.nproc).values()
            read = [o.get("megacache_bytes_read", 0) for o in outs]
            written = [o.get("megacache_bytes_written", 0) for o in outs]
            res["store_bytes_read"] = sum(read)
            res["megacache_bytes_written"] = sum(written)
            res["store_requests_per_rank"] = (sum(1 for b in read if b)
                                              + sum(1 for b in written if b)) / args.nproc
        else:
            _store_figures(res, args.nproc)
        rows[name] = res
        t = res.get("time_to_step1_s")
        print(f"[{name}] {res['status']}" + (f": step 1 after {t:.2f}s" if t else ""), flush=True)
        if res.get("error"):
            print(res["error"], flush=True)
    return rows


def derive(rows: dict[str, dict], nproc: int) -> dict[str, Any]:
    """Ratios to the floor, compile CPU, and the issue's targets."""
    floor = rows.get("warm-local", {})
    floor_t = floor.get("time_to_step1_s")
    floor_cpu = floor.get("cpu_s_per_rank") or []
    floor_cpu_rank = (sum(floor_cpu) / len(floor_cpu)) if floor_cpu and all(floor_cpu) else None
    for r in rows.values():
        cpus = r.get("cpu_s_per_rank") or []
        if cpus and all(c is not None for c in cpus):
            r["cpu_s_sum"] = round(sum(cpus), 2)
            if floor_cpu_rank is not None:
                r["compile_cpu_s_sum"] = round(sum(cpus) - len(cpus) * floor_cpu_rank, 2)
        t = r.get("time_to_step1_s")
        r["ratio_to_floor"] = round(t / floor_t, 2) if t and floor_t else None
    targets: dict[str, Any] = {}
    # One rank's compile: the costliest rank of `none`. Not the mean: the ranks of a node
    # share its local Inductor cache dir, so in `none` a rank partly hits entries that
    # another rank of the node wrote a moment earlier.
    none_cpus = rows.get("none", {}).get("cpu_s_per_rank") or []
    one_rank = (round(max(none_cpus) - floor_cpu_rank, 2)
                if none_cpus and all(none_cpus) and floor_cpu_rank is not None else None)
    for store in ("file", "s3"):
        warm = rows.get(f"ours-warm-{store}", {}).get("ratio_to_floor")
        targets[f"ours-warm-{store} <= 1.2x floor"] = {
            "value": warm, "met": warm is not None and warm <= 1.2}
        cold = rows.get(f"ours-cold-{store}", {}).get("compile_cpu_s_sum")
        ratio = round(cold / one_rank, 2) if cold is not None and one_rank else None
        targets[f"ours-cold-{store} compile CPU <= 1.1x one rank's"] = {
            "value": ratio, "met": ratio is not None and ratio <= 1.1,
            "one_rank_compile_cpu_s": one_rank, "summed_compile_cpu_s": cold}
    return {"floor_time_to_step1_s": floor_t, "floor_cpu_s_per_rank": floor_cpu_rank,
            "targets": targets}


def _ms(s: float | None) -> str:
    return "—" if s is None else f"{s * 1e3:.0f}"


def _bytes(n: Any) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def markdown(report: dict) -> str:
    m, f = report["machine"], harness.fmt
    lines = [
        f"Machine **{report['machine_name']}**: {m.get('cpu_count')} CPU cores, "
        f"{m.get('cuda_device') or 'no GPU'}, torch {m.get('torch')}, {report['time']}. "
        f"{report['nproc']} ranks, examples/train.py `{report['train_args']}`, "
        f"{report['steps']} steps.", "",
    ]
    lines += harness.md_table(
        ["row", "status", "step 1 (s)", "× floor", "CPU s (sum)", "compile CPU s",
         "store bytes read", "store requests / rank"],
        ([r["name"], r["status"], f(r.get("time_to_step1_s")), f(r.get("ratio_to_floor")),
          f(r.get("cpu_s_sum"), "{:.1f}"), f(r.get("compile_cpu_s_sum"), "{:.1f}"),
          _bytes(r.get("store_bytes_read")), f(r.get("store_requests_per_rank"), "{:.1f}")]
         for r in report["rows"].values()), align="ll" + "r" * 6)
    lines += ["", "Targets:", ""]
    for k, v in report["derived"]["targets"].items():
        lines.append(f"- {k}: {f(v['value'])} — {'met' if v['met'] else 'NOT met'}")
    if report.get("scale"):
        lines += ["", "Fake-compile scale test (threads as ranks, one process per node, one "
                  "TCPStore; store GETs per object = object downloads / objects):", ""]
        lines += harness.md_table(
            ["ranks", "nodes", "compiles / key", "GETs / object",
             "overhead / key median (ms)", "p99 (ms)", "wall (s)", "ideal (s)"],
            ([lv["ranks"], lv["nodes"], f"{lv['compiles_per_key']:.2f}",
              f(lv["gets_per_object"]), _ms(lv["overhead_median_s"]),
              _ms(lv["overhead_p99_s"]), f"{lv['wall_s']:.2f}", f"{lv['ideal_wall_s']:.2f}"]
             for lv in report["scale"]), align="r" * 8)
    return "\n".join(lines) + "\n"


def chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(report["rows"].values())
    names = [r["name"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 0.45 * len(rows) + 1.6), sharey=True)
    for i, r in enumerate(rows):
        t = r.get("time_to_step1_s")
        if t is not None:
            color = "tab:green" if r["name"].startswith("ours") else "tab:blue"
            ax1.barh(i, t, color=color)
            ax1.text(t, i, f" {t:.1f}s ({harness.fmt(r.get('ratio_to_floor'))}×)", va="center",
                     fontsize=8)
        elif r.get("exit", 0) is None:
            ax1.barh(i, r["wall_s"], color="tab:red", hatch="//", alpha=0.6)
            ax1.text(r["wall_s"], i, " deadlock: killed", va="center", fontsize=8)
        else:
            ax1.text(0, i, f" {r['status']}", va="center", fontsize=8)
        c = r.get("compile_cpu_s_sum")
        if c is not None:
            ax2.barh(i, max(c, 0), color="tab:gray")
            ax2.text(max(c, 0), i, f" {c:.1f}", va="center", fontsize=8)
    floor = report["derived"]["floor_time_to_step1_s"]
    if floor:
        ax1.axvline(floor, color="k", ls=":", lw=1)
    ax1.set_yticks(range(len(rows)), names)
    ax1.invert_yaxis()
    ax1.set_xlabel("launch → every rank finished step 1 (s)")
    ax2.set_xlabel("compile CPU-seconds, summed over ranks (minus warm-local)")
    fig.suptitle(f"{report['nproc']} ranks, {report['machine_name']}, torch "
                 f"{report['machine'].get('torch')}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(report: dict, stem: Path) -> None:
    name = report["machine_name"]
    Path(f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    md = markdown(report)
    Path(f"{stem}.md").write_text(f"# Benchmark on {name}\n\n![chart](bench-{name}.png)\n\n{md}")
    chart(report, Path(f"{stem}.png"))
    print("\n" + md)
    print(f"wrote {stem}.json, .md, .png")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--machine", default=None, help="name in the file names (default: cpuN or "
                   "the GPU's name and count)")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--train-args", default="", help='extra train.py args, e.g. "--layers 4"')
    p.add_argument("--rows", default=",".join(r for r in ROWS if not r.startswith("preimport")))
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per job")
    add_job_options(p)
    p.add_argument("--deadline", type=float, default=60.0,
                   help="megacache-broadcast's limit: seconds beyond none's step 1")
    p.add_argument("--no-scale", dest="scale", action="store_false")
    p.add_argument("--scale-ranks", default="8,32,128")
    p.add_argument("--scale-args", default="", help="more scripts/bench/scale.py args")
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    p.add_argument("--from-json", default=None, help="re-derive and re-render a saved report")
    return harness.parse_rows(p, argv, ROWS)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
        report["derived"] = derive(report["rows"], report["nproc"])
        write_outputs(report, Path(args.from_json).with_suffix(""))
        return 0
    info = harness.machine_info()
    harness.warm_bytecode_cache()
    resolve_compile_threads(args, info)
    name = args.machine or harness.machine_name(info)
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    print(f"work dir {work}", flush=True)
    servers = Servers(work)
    try:
        rows = run_rows(args, work, servers)
    finally:
        servers.stop()
    scale = None
    if args.scale:
        sj = work / "scale.json"
        cmd = [sys.executable, str(BENCH / "scale.py"), "--ranks", args.scale_ranks,
               "--json", str(sj), *shlex.split(args.scale_args)]
        print(f"[scale] {shlex.join(cmd)}", flush=True)
        if subprocess.run(cmd, cwd=REPO).returncode == 0:
            scale = json.loads(sj.read_text())
    report = {
        "benchmark": "scripts/bench.py", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv[1:], "machine_name": name, "machine": info, "nproc": args.nproc,
        "steps": args.steps, "train_args": args.train_args, "rows": rows,
        "derived": derive(rows, args.nproc), "scale": scale,
        "notes": {
            "cpu": "user+sys CPU of each worker's process tree (os.wait4 in scripts/bench/cpu.py:"
                   " the worker plus the compilers and compile workers it waited for), whole"
                   f" job; TORCHINDUCTOR_COMPILE_THREADS={args.compile_threads} in every row",
            "compile_cpu": "cpu_s_sum minus nproc x warm-local's mean per-rank CPU",
            "store_requests_per_rank": "ours: (index lookups + object downloads + 2 x "
                                       "publishes) / ranks; redis: commands processed / "
                                       "ranks; megacache: file reads + writes / ranks",
        },
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"bench-{name}"
    for r in rows.values():
        r.pop("coordinator_stats", None)  # summed into "store" and "coordinator"
    write_outputs(report, stem)
    failed = any(not r.get("ok") for r in rows.values() if r["name"] != "megacache-broadcast")
    harness.clean_up(work, args.keep or failed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
