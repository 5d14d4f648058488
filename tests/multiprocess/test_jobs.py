"""Real 2-rank torchrun jobs (gloo, CPU) under the coordinator: the product's promises.

Compiles are slow on CPU, so the jobs of a scenario run once per module (fixtures) and
several tests read them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tests.multiprocess import jobs

pytestmark = pytest.mark.multiprocess

DIE = Path(jobs.__file__).with_name("one_graph.py")
EXPECTED_Y = (torch.arange(12.0).reshape(3, 4).sin() + 1).sum(dim=1).tolist()


def assert_same_losses(job: jobs.Job, baseline: jobs.Job) -> None:
    assert len(job.outs) == len(baseline.outs) == 2
    for got, want in zip(job.outs, baseline.outs, strict=True):
        assert got["losses"] == pytest.approx(want["losses"], rel=1e-5, abs=1e-6)


def assert_each_graph_compiled_once(job: jobs.Job, store_dir: Path) -> None:
    """Every FX graph the job needed was compiled on exactly one rank and loaded on the other."""
    keys = jobs.store_variants(store_dir, "fxgraph")
    assert keys, "nothing was published"
    assert job.total("fxgraph_cache_miss") == len(keys), (keys, job.stats)
    for stats in job.stats:
        assert stats["fxgraph_cache_miss"] + stats["fxgraph_cache_hit"] == len(keys)


@pytest.fixture(scope="module")
def train(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """examples/train.py, DDP over torch.compile: uncoordinated, cold, warm on a fresh node."""
    tmp = tmp_path_factory.mktemp("train")
    store = tmp / "store"
    args = ["--steps", "3"]
    baseline = jobs.run(jobs.TRAIN, args, node=tmp / "node-base", store=None,
                        out=tmp / "base").check()
    # What other projects and environments left in the node's shared (per-user) dirs.
    jobs.node_env(tmp / "node-a")
    for path in (jobs.header_dir(tmp / "node-a") / "foreign.h.gch",
                 tmp / "node-a" / "triton" / "FOREIGN" / "k.so"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"another project's")
    cold = jobs.run(jobs.TRAIN, args, node=tmp / "node-a", store=str(store),
                    out=tmp / "cold", launcher_args=["--trace", str(tmp / "trace")]).check()
    cxx_env, cxx_log = jobs.compiler_log_env(tmp)
    warm = jobs.run(jobs.TRAIN, args, node=tmp / "node-b", store=f"file://{store}",
                    out=tmp / "warm", env=cxx_env, seed=False).check()
    return {"baseline": baseline, "cold": cold, "warm": warm, "store": store, "cxx": cxx_log,
            "nodes": tmp}


def test_cold_job_compiles_each_graph_on_one_rank(train: dict) -> None:
    assert_each_graph_compiled_once(train["cold"], train["store"])
    assert train["cold"].total("waits") >= 1
    assert_same_losses(train["cold"], train["baseline"])


def test_warm_job_on_fresh_node_compiles_nothing(train: dict) -> None:
    warm = train["warm"]
    for stats in warm.stats:
        assert stats["fxgraph_cache_miss"] == 0, stats
        assert stats["fxgraph_cache_hit"] > 0
        assert stats["published"] == 0
    assert jobs.kernels_built(train["cxx"]) == []
    assert_same_losses(warm, train["baseline"])
    # The cold job's rank 0 published a snapshot at exit; one rank of this node unpacked it.
    assert sum("snapshot_place_files" in s["phases"] for s in warm.stats) == 1, warm.stats
    # It carried the precompiled header the cold job built, nothing of other projects.
    carried = jobs.snapshot_file_names(train["store"])
    assert any(n.startswith("pch/") and n.endswith(".gch") for n in carried), carried
    assert not any("foreign" in n.lower() for n in carried), carried
    # It named every stored entry the node then had, the AOTAutograd entry rank 1 published
    # too (rank 0 built its own): nothing fetched one by one and nothing built (no ISA probe,
    # no header: a snapshot would carry what a node built), so no new snapshot.
    for stats in warm.stats:
        assert stats["materialized"] == 0 and stats["loaded"] == 0, stats
        assert "snapshot_publish" not in stats["phases"], stats["phases"]


def test_job_summary_trace_and_record_of_use(train: dict) -> None:
    """Rank 0 logs and writes the job's summary, merges the ranks' traces, and the warm job
    records what it loaded (prune counts age from it)."""
    cold, tmp = train["cold"], train["nodes"]
    assert "job summary: 2 ranks\n  FX graphs" in cold.output, cold.output[-3000:]
    job = json.loads((tmp / "cold" / "stats.job.json").read_text())
    assert [r["rank"] for r in job["ranks"]] == [0, 1]
    assert job["totals"]["fxgraph_cache_miss"] == cold.total("fxgraph_cache_miss")
    assert set(job["totals"]["misses"]) == {"new graph"}, job["totals"]["misses"]
    events = json.loads((tmp / "trace" / "job.trace.json").read_text())["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    waited = {e["args"]["key"] for e in spans if e["name"] == "wait"}
    compiled = {(e["pid"], e["args"]["key"]) for e in spans if e["name"] == "compile fxgraph"}
    assert waited and {e["pid"] for e in spans} == {0, 1}
    for key in waited:  # each wait was for a compile on the other rank
        assert [pid for pid, k in compiled if k == key] == [
            1 - next(e["pid"] for e in spans if e["name"] == "wait" and e["args"]["key"] == key)]
    assert all(e["args"].get("compile_id") for e in spans if e["name"] == "torch.compile")
    records = sorted(train["store"].glob("v1/*/used/*.json"), key=lambda p: p.stat().st_mtime)
    assert len(records) == 2  # the cold job's (rank 0 loaded rank 1's graphs), the warm one's
    used = set(json.loads(records[-1].read_text())["digests"])
    stored = {e.name for d in train["store"].glob("v1/*/index/fxgraph/*")
              for e in jobs.index_entries(d)}
    assert stored and stored <= used


def test_one_download_per_node(train: dict) -> None:
    """The two ranks of the warm node fetch each object from the store once between them."""
    warm = train["warm"]
    fetches = sum(s["store"]["fetches"] for s in warm.stats)
    # Every download and every publish lands in the node tier once (the warm job publishes
    # a snapshot that adds the entries it loaded one by one): more fetches than that would
    # mean a second rank downloaded an object (the snapshot, say) again.
    published = warm.total("published") + warm.output.count("published snapshot")
    cached = [p for p in (train["nodes"] / "node-b" / "objects").glob("??/*") if p.is_file()]
    assert fetches > 0 and fetches == len(cached) - published, (fetches, len(cached),
                                                                published)


def test_ranks_started_without_torchrun(train: dict, tmp_path: Path) -> None:
    """As srun or mpirun start them: rank 0 hosts the job's c10d store (the script's process
    group shares it) and each graph compiles on one rank. The second job is a script that
    installs the coordinator itself, as launchers that re-execute the script per rank
    (Lightning) need, with the store in PT2CC_CACHE: it compiles nothing."""
    store = tmp_path / "store"
    cold = jobs.run_without_torchrun(DIE, ["--group"], node=tmp_path / "a", store=str(store),
                                     out=tmp_path / "cold").check()
    assert "in-job coordination on through a c10d store rank 0 hosts" in cold.output
    assert_each_graph_compiled_once(cold, store)
    assert [o["y"] for o in cold.outs] == [pytest.approx(EXPECTED_Y)] * 2
    shutil.copytree(train["store"], tmp_path / "train-store")
    warm = jobs.run_without_torchrun(Path(jobs.__file__).with_name("installs_itself.py"),
                                     ["--steps", "3"], node=tmp_path / "b",
                                     store=str(tmp_path / "train-store"), out=tmp_path / "warm",
                                     launcher=False).check()
    assert "in-job coordination on through a c10d store rank 0 hosts" in warm.output
    for stats in warm.stats:
        assert stats["fxgraph_cache_miss"] == 0, stats
    assert_same_losses(warm, train["baseline"])


def test_fsdp2_per_block_compile(train: dict, tmp_path: Path) -> None:
    """FSDP2 over gloo, each block compiled and sharded (torchtitan's pattern): each FX graph
    compiles on one rank, a fresh node compiles nothing. The losses match the uncoordinated
    DDP job's: same model, seed and batches; only the order of the reductions differs."""
    store, args = tmp_path / "store", ["--steps", "3", "--parallel", "fsdp2"]
    cold = jobs.run(jobs.TRAIN, args, node=tmp_path / "a", store=str(store),
                    out=tmp_path / "cold").check()
    assert_each_graph_compiled_once(cold, store)
    assert_same_losses(cold, train["baseline"])
    warm = jobs.run(jobs.TRAIN, args, node=tmp_path / "b", store=str(store),
                    out=tmp_path / "warm").check()
    for stats in warm.stats:
        assert stats["fxgraph_cache_miss"] == 0 and stats["fxgraph_cache_hit"] > 0, stats
    assert_same_losses(warm, train["baseline"])


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("scenarios")
    store = tmp / "store"
    cold = jobs.run(jobs.SCENARIOS, [], node=tmp / "node-a", store=str(store),
                    out=tmp / "cold").check()
    warm = jobs.run(jobs.SCENARIOS, [], node=tmp / "node-b", store=str(store),
                    out=tmp / "warm").check()
    return {"cold": cold, "warm": warm, "store": store}


@pytest.mark.parametrize("phase", ["cold", "warm"])
def test_seed_scenarios_agree_with_eager_on_every_rank(scenarios: dict, phase: str) -> None:
    job = scenarios[phase]
    assert len(job.outs) == 2
    for out in job.outs:
        bad = [r for r in out["results"] if not r["ok"]]
        assert not bad, f"rank {out['rank']}: {bad}"
        assert len(out["results"]) == 8


def test_seed_scenarios_compile_once_then_load(scenarios: dict) -> None:
    cold, warm = scenarios["cold"], scenarios["warm"]
    keys = jobs.store_variants(scenarios["store"], "fxgraph")
    # No graph is compiled twice, whichever rank claims it (ranks' sizes differ in some).
    assert cold.total("fxgraph_cache_miss") == len(keys)
    for stats in warm.stats:
        assert stats["fxgraph_cache_miss"] == 0, stats


@pytest.mark.s3
def test_cold_then_warm_on_s3(s3_bucket: str, tmp_path: Path) -> None:
    store = f"s3://{s3_bucket}/cache"
    # d-model 128: parameters past DDP's 1 MB first bucket, so DDPOptimizer splits the graph
    # (AOTAutograd then bypasses) and S3 misses happen inside its bucket compiles.
    args = ["--steps", "2", "--layers", "2", "--d-model", "128"]
    cold = jobs.run(jobs.TRAIN, args, node=tmp_path / "a", store=store,
                    out=tmp_path / "cold").check()
    warm = jobs.run(jobs.TRAIN, args, node=tmp_path / "b", store=store,
                    out=tmp_path / "warm").check()
    assert cold.total("autograd_cache_bypass") > 0  # the graph was split
    keys = fx_keys_on_s3(s3_bucket)
    assert keys and cold.total("fxgraph_cache_miss") == len(keys), cold.stats
    for stats in warm.stats:
        assert stats["fxgraph_cache_miss"] == 0, stats
    for got, want in zip(warm.outs, cold.outs, strict=True):
        assert got["losses"] == pytest.approx(want["losses"], rel=1e-5, abs=1e-6)


def test_node_that_built_what_the_snapshot_lacked_publishes_it(train: dict,
                                                               tmp_path: Path) -> None:
    """A snapshot without this environment's header and libraries (as one made where
    Python lives at another path): the job builds them although every graph hits, and
    publishes a snapshot with them, so that the next fresh node builds nothing."""
    from coordinator import bundle
    from coordinator.snapshot import compress, open_decompressed

    store = tmp_path / "store"
    shutil.copytree(train["store"], store)
    ((stored, tag),) = jobs.snapshot_tags(store)
    with open_decompressed(stored.get_snapshot(tag)) as stream:
        old = bundle.Reader(stream)
        files = {n: body.read() for n, body in old.files()}
        payload, meta = old.payload, old.meta
    kept = {n: d for n, d in files.items() if not n.startswith("pch/") and not n.endswith(".so")}
    assert len(kept) < len(files)
    stored.put_snapshot(tag, compress(bundle.pack(payload, kept, meta)))

    built_env, built_log = jobs.compiler_log_env(tmp_path / "cxx-a")
    # Machines that never ran Inductor (other tests' nodes have its header already).
    first = jobs.run(jobs.TRAIN, ["--steps", "3"], node=tmp_path / "node-a", store=str(store),
                     out=tmp_path / "a", env=built_env, seed=False).check()
    assert first.total("fxgraph_cache_miss") == 0, first.stats
    assert jobs.kernels_built(built_log), "the job had nothing to build: the test is void"
    assert jobs.headers_built(built_log), "the job built no header: the test is void"
    assert "published snapshot" in first.output, first.output[-3000:]
    clean_env, clean_log = jobs.compiler_log_env(tmp_path / "cxx-b")
    second = jobs.run(jobs.TRAIN, ["--steps", "3"], node=tmp_path / "node-b",
                      store=str(store), out=tmp_path / "b", env=clean_env, seed=False).check()
    assert second.total("fxgraph_cache_miss") == 0, second.stats
    assert jobs.kernels_built(clean_log) == [] and jobs.headers_built(clean_log) == []
    assert_same_losses(second, train["baseline"])


def fx_keys_on_s3(bucket: str) -> list[str]:
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]})
    return fs.glob(f"{bucket}/cache/v1/*/index/fxgraph/*")


def test_two_jobs_at_once_on_one_store(tmp_path: Path) -> None:
    """Two jobs publish the same keys at once: both finish right, and the store verifies,
    every index entry naming a whole object."""
    store = tmp_path / "store"
    t0 = time.monotonic()
    procs = [jobs.start(DIE, [], node=tmp_path / f"node-{i}", store=str(store),
                        out=tmp_path / f"job-{i}") for i in range(2)]
    done = [jobs.finish(p, tmp_path / f"job-{i}", started=t0).check()
            for i, p in enumerate(procs)]
    for job in done:
        assert [o["y"] for o in job.outs] == [pytest.approx(EXPECTED_Y)] * 2
    assert sum(job.total("published") for job in done) >= 1
    verify = subprocess.run([sys.executable, "-m", "storage.cli", "verify", str(store)],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # Every index entry names an object that exists and verifies (verify checked hashes).
    entries = [e for d in store.glob("v1/*/index/*/*") for e in jobs.index_entries(d)]
    assert entries
    for entry in entries:
        assert list(store.glob(f"v1/*/objects/{entry.name[:2]}/{entry.name}")), entry


def test_claimant_killed_mid_compile_then_group_restarts(tmp_path: Path) -> None:
    """torchrun restarts the group; the new group's claims are new (run id + restart count)."""
    t0 = time.monotonic()
    job = jobs.run(DIE, [], node=tmp_path / "node", store=str(tmp_path / "store"),
                   out=tmp_path / "out", torchrun_args=["--max-restarts", "1"],
                   env={"DIE_ONCE_MARKER": str(tmp_path / "died")}, timeout=300).check()
    assert (tmp_path / "died").exists()
    assert [o["restart"] for o in job.outs] == [1, 1], job.output[-3000:]
    for out in job.outs:
        assert out["y"] == pytest.approx(EXPECTED_Y)
    assert time.monotonic() - t0 < 240


def test_claimant_killed_mid_compile_survivor_compiles(tmp_path: Path) -> None:
    """Without a supervisor that kills the group, the waiter sees the heartbeat stop.

    The ranks sit on two simulated nodes: on one node the survivor would wait on the
    claimant's node lock, which the kernel releases at the kill (tested in
    test_single_flight), and never look at the heartbeat."""
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                           timeout=timedelta(seconds=30))
    env = {**os.environ,
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(server.port), "WORLD_SIZE": "2",
           "TORCHELASTIC_RUN_ID": "survivor-test", "TORCHELASTIC_RESTART_COUNT": "0",
           "DIE_ONCE_MARKER": str(tmp_path / "died")}
    cmd = [sys.executable, "-m", "coordinator", "--cache", str(tmp_path / "store"),
           "--stale-after", "6", str(DIE), "--out", str(tmp_path / "out")]
    t0 = time.monotonic()
    procs = [subprocess.Popen(cmd, env={**env, **jobs.cpu_job_env(tmp_path / f"node{r}"),
                                        "RANK": str(r), "LOCAL_RANK": "0", "GROUP_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [-signal.SIGKILL, 0], outputs
    survivor = next(out for p, out in zip(procs, outputs, strict=True) if p.returncode == 0)
    assert "no heartbeat" in survivor and "compiling locally" in survivor, survivor
    results = [json.loads(p.read_text()) for p in tmp_path.glob("out.rank*.json")]
    assert len(results) == 1 and results[0]["y"] == pytest.approx(EXPECTED_Y)
    assert time.monotonic() - t0 < 180


def test_two_nodes_meet_at_the_job_store_once_per_node_per_key(tmp_path: Path) -> None:
    """Two torchruns (`--nnodes 2`, a node dir each), 2 ranks each: per key one rank per
    node deals with the job store, the others wait on their node's lock, and the other
    node's representative is woken by the publish (its wait ends right after it)."""
    port = jobs.free_port()
    store = tmp_path / "store"
    procs = [jobs.start(DIE, [], node=tmp_path / f"node{n}", store=str(store),
                        out=tmp_path / f"out{n}", env={"SLOW_COMPILE_S": "4"},
                        launcher_args=["--stale-after", "300", "--trace",
                                       str(tmp_path / f"trace{n}")],
                        torchrun_args=["--nnodes", "2", "--rdzv-endpoint", f"127.0.0.1:{port}"])
             for n in range(2)]
    for n, proc in enumerate(procs):
        jobs.finish(proc, tmp_path / f"out{n}", nproc=0).check()
    nodes = [[json.loads(p.read_text()) for p in (tmp_path / f"out{n}").glob("stats.rank*.json")]
             for n in range(2)]
    assert [len(ranks) for ranks in nodes] == [2, 2], nodes
    assert sum(s["fxgraph_cache_miss"] for ranks in nodes for s in ranks) == 1
    for ranks in nodes:
        assert sum(s["job_store_keys"] for s in ranks) == 1, ranks  # one rank of the node
        assert sum(s["waits"] for s in ranks) >= 1
    waiting = next(n for n in range(2) if all(s["fxgraph_cache_miss"] == 0 for s in nodes[n]))
    representative = next(s for s in nodes[waiting] if s["job_store_keys"] == 1)
    assert representative["loaded_after_wait"] == 1 and representative["waited_s"] > 1.0

    def spans(node: int, name: str) -> list[dict]:
        return [e for p in (tmp_path / f"trace{node}").glob("rank*.trace.json")
                for e in json.loads(p.read_text())["traceEvents"] if e.get("name") == name]

    rep_wait = next(e for e in spans(waiting, "wait") if e["pid"] == representative["rank"])
    (published,) = [e for e in spans(1 - waiting, "publish")
                    if e["args"]["key"] == rep_wait["args"]["key"]]
    woken_s = (rep_wait["ts"] + rep_wait["dur"] - published["ts"] - published["dur"]) / 1e6
    assert -0.1 < woken_s < 2.0, woken_s  # the publish ended its wait (stale-after is 300 s)
    outs = [json.loads(p.read_text()) for p in tmp_path.glob("out?/out.rank*.json")]
    assert len(outs) == 4 and all(o["y"] == pytest.approx(EXPECTED_Y) for o in outs)


VARIANTS = Path(jobs.__file__).with_name("variants.py")


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Each rank needs its own guarded variants of one FX graph: cold, then fresh nodes."""
    tmp = tmp_path_factory.mktemp("variants")
    store = tmp / "store"
    run = {"cold": [], "warm": [], "warm-no-snapshot": ["--no-snapshot"]}
    out = {name: jobs.run(VARIANTS, [], node=tmp / f"node-{name}", store=str(store),
                          out=tmp / name, launcher_args=flags).check()
           for name, flags in run.items()}
    out["new-sizes"] = jobs.run(VARIANTS, ["--grow", "3"], node=tmp / "node-cold",
                                store=str(store), out=tmp / "new-sizes").check()
    return {**out, "store": store}


@pytest.mark.parametrize("phase", ["cold", "warm", "warm-no-snapshot", "new-sizes"])
def test_no_rank_runs_a_variant_whose_guards_fail_for_it(variants: dict, phase: str) -> None:
    for out in variants[phase].outs:
        assert [r["ok"] for r in out["results"]] == [True, True], out


def test_every_variant_is_stored_once(variants: dict) -> None:
    fx = jobs.store_variants(variants["store"], "fxgraph")
    aot = jobs.store_variants(variants["store"], "aotautograd")
    assert len(fx) == len(aot) == 1, (fx, aot)  # one graph, one key of each kind
    # 4 sizes cold + 4 new ones, each compiled once in its job, none stored twice.
    assert list(fx.values()) == [8] and list(aot.values()) == [8]
    assert variants["cold"].total("fxgraph_cache_miss") == 4


@pytest.mark.parametrize("phase", ["warm", "warm-no-snapshot"])
def test_fresh_node_loads_each_ranks_own_variants(variants: dict, phase: str) -> None:
    """Rank 1's variants are neither in rank 0's snapshot nor the newest stored ones."""
    for stats in variants[phase].stats:
        assert stats["fxgraph_cache_miss"] == 0 and stats["autograd_cache_miss"] == 0, stats
        assert stats["fxgraph_cache_hit"] == 2 and stats["published"] == 0, stats


def test_a_rank_whose_sizes_need_another_variant_does_not_wait(variants: dict) -> None:
    """The stored variants' guards failed for both ranks: the one that lost the claim
    compiles its own variant at once instead of waiting for the claimant's."""
    job = variants["new-sizes"]
    assert job.total("fxgraph_cache_miss") == 4
    assert job.total("waits_skipped") + job.total("loaded_after_wait") >= 1, job.stats
    assert job.total("wasted_wait_s") < 1.0, job.stats
