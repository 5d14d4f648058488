"""Fake-compile scale test: many ranks on several simulated nodes, the real hooks' policy.

Each simulated rank is a thread with its own `coordinator.artifacts.Artifacts`, its own
store handle (`storage.open_store`, with its node's node-local dir) and its own
`coordinator.single_flight.SingleFlight` on a client of one real `torch.distributed`
TCPStore server (as under torchrun). Each node is one process, so the node tier's file
locks work across processes exactly as on a machine of real ranks. Every rank looks up
the same keys in the same order, the way PyTorch calls the hooks: `offer_local` (guard
candidates), then `get` (the remote lookup); on a miss it "compiles" (sleeps `--delay`)
and `put`s an artifact of `--size` bytes, then signals compile end.

Reported per level: compiles per key (single-flight: 1), store object downloads per
object (the node tier's `fetches`: must equal the number of nodes, not ranks), and the
coordination overhead per key: how long a waiting rank still spends after the claimant
has published (median, p99).

    python scripts/bench/scale.py --ranks 8,32,128 --ranks-per-node 8 --json OUT
"""

from __future__ import annotations

import argparse
import base64
import json
import os
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
FINGERPRINT = "bench-fake-compile"


def fake_value(key: str, size: int) -> bytes:
    """An entry shaped like PyTorch's remote-cache value ({"data": base64}), `size` bytes."""
    raw = (key.encode() * (size // max(len(key), 1) + 1))[: size * 3 // 4]
    return json.dumps({"data": base64.b64encode(raw).decode()}).encode()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


# -- one node: a process whose threads are ranks ----------------------------------------------


def rank_thread(a: argparse.Namespace, rank: int, out: dict) -> None:
    import torch.distributed as dist

    from coordinator.artifacts import Artifacts
    from coordinator.kernels import KernelFiles
    from coordinator.single_flight import JobStore, SingleFlight
    from coordinator.stats import RankStats
    from storage import open_store

    rank_dir = Path(a.node_dir) / f"rank{rank}"
    def connect() -> dist.TCPStore:
        return dist.TCPStore("127.0.0.1", a.port, is_master=False,
                             timeout=timedelta(seconds=120), wait_for_workers=False)

    client = connect()
    job = JobStore(*(dist.PrefixStore(f"pt2cc/{a.run_id}/0/", c) for c in (client, connect())))
    flight = SingleFlight(job, rank, wait_timeout_s=a.wait_timeout, stale_after_s=30.0,
                          heartbeat_s=2.0, node_dir=a.node_dir)
    store = open_store(a.store, fingerprint=FINGERPRINT,
                       node_cache_dir=str(Path(a.node_dir) / "objects"))
    stats = RankStats(rank=rank)
    kernels = KernelFiles(root=str(rank_dir / "inductor"), header_dir=str(rank_dir / "pch"))
    art = Artifacts(store, flight, kernels, stats)

    client.add("bench/ready", 1)
    client.wait(["bench/go"])
    events = []
    for k in range(a.keys):
        key = f"pt2:fake-graph::k{k:04d}:c1"
        subdir = rank_dir / "fxgraph" / f"k{k:04d}"
        t_start = time.time()
        art.offer_local(KIND, key, str(subdir))
        if subdir.is_dir() and any(subdir.iterdir()):
            events.append({"key": k, "role": "local", "t_start": t_start, "t_end": time.time()})
            continue
        waits_before = flight.waits
        value = art.get(KIND, key)
        if value is None:  # a miss we claimed (or gave up waiting on): compile, publish
            time.sleep(a.delay)
            art.put(KIND, key, fake_value(key, a.size))
            t_pub = time.time()
            client.set(f"bench/pub/{k}", repr(t_pub))
            art.compile_ended()
            events.append({"key": k, "role": "compiled", "t_start": t_start, "t_end": t_pub})
        else:
            role = "waited" if flight.waits > waits_before else "loaded"
            events.append({"key": k, "role": role, "t_start": t_start, "t_end": time.time()})
    flight.close()
    out[rank] = {"rank": rank, "events": events, "store": store.stats.as_dict(),
                 "waits": flight.waits, "waited_s": flight.waited_s, "claimed": stats.claimed,
                 "published": stats.published, "loaded_after_wait": stats.loaded_after_wait}


def node_main(a: argparse.Namespace) -> None:
    # In a real rank Inductor is imported long before its first cache lookup; the policy
    # reaches into it (the local cache dir of a key), so import it before the clock starts.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(a.node_dir) / "inductor")
    import torch._inductor.codecache  # noqa: F401

    out: dict[int, dict] = {}
    threads = [threading.Thread(target=rank_thread, args=(a, a.first_rank + i, out))
               for i in range(a.ranks_per_node)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    Path(a.node_out).write_text(json.dumps(list(out.values())))


# -- the driver ------------------------------------------------------------------------------


def run_level(a: argparse.Namespace, ranks: int, work: Path) -> dict:
    import torch.distributed as dist

    nodes = max(1, ranks // a.ranks_per_node)
    per_node = ranks // nodes
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                           timeout=timedelta(seconds=300))
    level = work / f"ranks{ranks}"
    store_url = f"{a.store.rstrip('/')}/ranks{ranks}-{os.getpid()}"
    procs = []
    for n in range(nodes):
        node_dir = level / f"node{n}"
        node_dir.mkdir(parents=True)
        cmd = [sys.executable, __file__, "--node-worker", "--port", str(server.port),
               "--run-id", f"r{ranks}", "--store", store_url, "--node-dir", str(node_dir),
               "--node-out", str(node_dir / "out.json"), "--first-rank", str(n * per_node),
               "--ranks-per-node", str(per_node), "--keys", str(a.keys),
               "--delay", str(a.delay), "--size", str(a.size),
               "--wait-timeout", str(a.wait_timeout)]
        procs.append(subprocess.Popen(cmd))
    deadline = time.monotonic() + 600
    while server.add("bench/ready", 0) < ranks:
        if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
            for p in procs:
                p.kill()
            raise RuntimeError(f"{ranks} ranks: nodes did not start")
        time.sleep(0.2)
    t_go = time.time()
    server.set("bench/go", "1")
    for p in procs:
        if p.wait() != 0:
            raise RuntimeError(f"{ranks} ranks: a node failed (exit {p.returncode})")
    published = {k: float(server.get(f"bench/pub/{k}").decode()) for k in range(a.keys)
                 if server.check([f"bench/pub/{k}"])}
    records = [r for n in range(nodes)
               for r in json.loads((level / f"node{n}" / "out.json").read_text())]

    compiles = {k: 0 for k in range(a.keys)}
    overhead: list[float] = []
    claimant: list[float] = []
    roles: dict[str, int] = {}
    for r in records:
        for e in r["events"]:
            roles[e["role"]] = roles.get(e["role"], 0) + 1
            if e["role"] == "compiled":
                compiles[e["key"]] += 1
                claimant.append(e["t_end"] - e["t_start"] - a.delay)
            elif e["role"] == "waited" and e["key"] in published:
                overhead.append(e["t_end"] - published[e["key"]])
    wall = max(e["t_end"] for r in records for e in r["events"]) - t_go  # go to last rank done
    fetches = sum(r["store"]["fetches"] for r in records)
    gets = sum(r["store"]["gets"] for r in records)
    objects = sum(compiles.values())  # each compile published one object
    return {
        "ranks": ranks,
        "nodes": nodes,
        "ranks_per_node": per_node,
        "keys": a.keys,
        "fake_compile_s": a.delay,
        "artifact_bytes": len(fake_value("pt2:fake-graph::k0000:c1", a.size)),
        "wall_s": round(wall, 3),
        "ideal_wall_s": a.keys * a.delay,
        "compiles_per_key": statistics.mean(compiles.values()),
        "max_compiles_of_a_key": max(compiles.values()),
        "objects": objects,
        "object_downloads": fetches,
        "gets_per_object": fetches / objects if objects else None,
        "gets_per_object_target": nodes,
        "index_lookups_per_rank": gets / ranks,
        "bytes_read": sum(r["store"]["bytes_read"] for r in records),
        "node_cache_hits": sum(r["store"]["node_cache_hits"] for r in records),
        "roles": roles,
        "overhead_samples": len(overhead),
        "overhead_median_s": statistics.median(overhead) if overhead else None,
        "overhead_p99_s": percentile(overhead, 99),
        "overhead_max_s": max(overhead) if overhead else None,
        # lookup + claim + publish around the fake compile, on the rank that compiled
        "claimant_overhead_median_s": statistics.median(claimant) if claimant else None,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", default="8,32,128", help="comma-separated rank counts")
    p.add_argument("--ranks-per-node", type=int, default=8)
    p.add_argument("--keys", type=int, default=8, help="graphs per job")
    p.add_argument("--delay", type=float, default=0.5, help="fake compile seconds per key")
    p.add_argument("--size", type=int, default=1 << 20, help="artifact bytes per key")
    p.add_argument("--store", default=None, help="store URL (default: a temp dir)")
    p.add_argument("--wait-timeout", type=float, default=120.0)
    p.add_argument("--json", default=None, help="write the levels here")
    # node-worker mode (started by the driver)
    p.add_argument("--node-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--run-id", help=argparse.SUPPRESS)
    p.add_argument("--node-dir", help=argparse.SUPPRESS)
    p.add_argument("--node-out", help=argparse.SUPPRESS)
    p.add_argument("--first-rank", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.node_worker:
        node_main(a)
        return 0
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    a.store = a.store or (work / "store").as_uri()
    levels = []
    for ranks in (int(x) for x in a.ranks.split(",")):
        lv = run_level(a, ranks, work)
        levels.append(lv)
        med, p99 = lv["overhead_median_s"], lv["overhead_p99_s"]
        print(f"[scale] {ranks} ranks on {lv['nodes']} nodes: wall {lv['wall_s']:.2f}s "
              f"(ideal {lv['ideal_wall_s']:.2f}s), compiles/key {lv['compiles_per_key']:.2f}, "
              f"GETs/object {lv['gets_per_object']} (nodes {lv['nodes']}), overhead/key "
              f"median {med if med is None else round(med * 1000)} ms, "
              f"p99 {p99 if p99 is None else round(p99 * 1000)} ms", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(levels, indent=1) + "\n")
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
