"""examples/train.py (DDP over torch.compile, bf16 autocast) on 2 GPUs over NCCL.

One module fixture runs the cold jobs side by side (uncoordinated, coordinated on a local
store, coordinated on S3), a second one the jobs that follow on fresh nodes; each test
then checks one promise (one compile per graph, fresh nodes load, losses, S3) against
what those jobs wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from cuda_jobs import (
    TRAIN,
    Job,
    expect_no_kernel_beyond_pytorch,
    fx_only_node,
    losses_close,
    start,
    store_fx_keys,
    store_keys,
    two_gpus,
)

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not two_gpus(), reason="needs 2 CUDA GPUs")]

ARGS = ["--layers", "2", "--d-model", "128", "--heads", "4", "--seq", "64", "--batch", "4",
        "--steps", "3"]
STORES = ["local", pytest.param("s3", marks=pytest.mark.s3)]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory, s3_store: tuple[str | None, str]
         ) -> SimpleNamespace:
    work: Path = tmp_path_factory.mktemp("train")
    urls = {"local": str(work / "store"), "s3": s3_store[0]}
    cold = {"plain": start("plain", work, work / "node-plain", TRAIN, ARGS, cache=None)}
    for kind, url in urls.items():
        if url is not None:
            cold[f"cold-{kind}"] = start(f"cold-{kind}", work, work / f"node-{kind}-a", TRAIN,
                                         ARGS, cache=url)
    if urls["s3"] is not None:  # the diagnosis of test_s3_cold_with_fsspec_cycles_broken
        cold["cold-s3-nocycle"] = start(
            "cold-s3-nocycle", work, work / "node-s3-nocycle", TRAIN, ARGS,
            cache=urls["s3"] + "-nocycle", env={"PT2CC_TEST_BREAK_FSSPEC_CYCLES": "1"})
    done = {name: r.result() for name, r in cold.items()}
    keys_after_cold = {kind: store_fx_keys(url) for kind, url in urls.items()
                       if url is not None and done[f"cold-{kind}"].ok}
    # Second round, on fresh nodes against the stores the cold jobs filled.
    later = {}
    for kind, url in urls.items():
        if url is not None:
            later[f"warm-{kind}"] = start(f"warm-{kind}", work, work / f"node-{kind}-b", TRAIN,
                                          ARGS, cache=url)
    later["nonorm"] = start("nonorm", work, work / "node-local-c", TRAIN, ARGS,
                            cache=urls["local"], launcher_args=["--no-device-normalization"])
    # Baselines for what a fresh node may still compile: the per-key path alone (no
    # snapshot), and PyTorch by itself warm from a copy of its FX cache.
    later["warm-local-nosnap"] = start("warm-local-nosnap", work, work / "node-local-d", TRAIN,
                                       ARGS, cache=urls["local"], launcher_args=["--no-snapshot"])
    later["plain-fxonly"] = start("plain-fxonly", work,
                                  fx_only_node(work / "node-plain", work / "node-fxonly"),
                                  TRAIN, ARGS, cache=None)
    done.update({name: r.result() for name, r in later.items()})
    kinds = {kind: len(store_keys(urls["local"], kind)) for kind in
             ("fxgraph", "aotautograd", "autotune", "bundled-autotune", "pgo")}
    (work / "store-keys-by-kind.json").write_text(json.dumps(kinds))  # for the logs
    return SimpleNamespace(work=work, urls=urls, jobs=done, keys_after_cold=keys_after_cold,
                           s3_reason=s3_store[1], local_keys_by_kind=kinds)


def _job(jobs: SimpleNamespace, name: str, store: str = "local") -> Job:
    if store == "s3" and jobs.urls["s3"] is None:
        pytest.skip(jobs.s3_reason)
    return jobs.jobs[name].check()


def _lookups(job: Job, rank: int) -> int:
    """FX graph cache lookups of one rank, from PyTorch's counters (the wrapper's dump)."""
    ind = job.counters[rank]["inductor"]
    return ind.get("fxgraph_cache_miss", 0) + ind.get("fxgraph_cache_hit", 0)


@pytest.mark.parametrize("store", STORES)
def test_cold_compiles_each_graph_on_one_rank(jobs: SimpleNamespace, store: str) -> None:
    """Sum over ranks of FX graph compiles == keys in the store, one variant each."""
    job, plain = _job(jobs, f"cold-{store}", store), _job(jobs, "plain")
    keys = jobs.keys_after_cold.get(store, {})
    assert keys, "the cold job published no FX graph"
    assert all(n == 1 for n in keys.values()), f"duplicate variants: {keys}"
    assert job.total("fxgraph_cache_miss") == len(keys), job.stats
    for rank in range(2):
        # Each rank looked up as many graphs as a rank of the uncoordinated job, and
        # every graph it did not compile it loaded (after a wait, or found it published).
        assert _lookups(job, rank) == _lookups(plain, rank) > 0


@pytest.mark.parametrize("store", STORES)
def test_cold_no_triton_kernel_compiled_twice(jobs: SimpleNamespace, store: str) -> None:
    """Each rank has its own Triton cache dir: a kernel compiled on both would show."""
    job, plain = _job(jobs, f"cold-{store}", store), _job(jobs, "plain")
    compiled = [set(job.compiled_kernels(r)) for r in range(2)]
    needed = set(plain.compiled_kernels(0)) | set(plain.compiled_kernels(1))
    assert needed, "the probe saw no Triton compile in the uncoordinated job"
    assert not compiled[0] & compiled[1], f"compiled on both ranks: {compiled[0] & compiled[1]}"
    assert len(compiled[0]) + len(compiled[1]) <= len(needed)
    for rank in range(2):
        emitted = job.counters[rank]["inductor"].get("triton_bundler_read_and_emit_kernel", 0)
        if job.stat(rank, "fxgraph_cache_miss") == 0:
            assert not compiled[rank], f"rank {rank} compiled no graph but Triton kernels"
            assert emitted > 0, "a loading rank must get its kernels from the FX graph bundles"


@pytest.mark.parametrize("store", STORES)
def test_cold_losses_equal_uncoordinated(jobs: SimpleNamespace, store: str) -> None:
    job, plain = _job(jobs, f"cold-{store}", store), _job(jobs, "plain")
    for rank in range(2):
        assert losses_close(job.losses(rank), plain.losses(rank)), (job.outs, plain.outs)


def _no_compile_beyond_pytorch(job: Job, baseline: Job) -> None:
    """No graph compiled, and no Triton kernel beyond those PyTorch alone recompiles warm
    from its own FX cache (`baseline`)."""
    graphs = [job.stat(r, "fxgraph_cache_miss") for r in range(2)]
    assert graphs == [0, 0], f"graphs compiled per rank {graphs}: their kernels too, of course"
    expect_no_kernel_beyond_pytorch(job, baseline)


@pytest.mark.parametrize("store", STORES)
def test_fresh_node_compiles_no_graph(jobs: SimpleNamespace, store: str) -> None:
    """A job on a fresh node: no FX graph compiled, no wait, right losses."""
    job, plain = _job(jobs, f"warm-{store}", store), _job(jobs, "plain")
    for rank in range(2):
        s = job.stats[rank]
        assert s["fxgraph_cache_miss"] == 0, s
        assert s["fxgraph_cache_hit"] == _lookups(plain, rank), s
        assert s["waits"] == 0, s
        assert losses_close(job.losses(rank), plain.losses(rank)), (job.outs, plain.outs)


@pytest.mark.parametrize("store", STORES)
def test_fresh_node_compiles_no_triton_kernel(jobs: SimpleNamespace, store: str) -> None:
    """... and no Triton kernel (each rank's own Triton cache starts empty)."""
    _no_compile_beyond_pytorch(_job(jobs, f"warm-{store}", store), _job(jobs, "plain-fxonly"))


def test_fresh_node_per_key_path_alone(jobs: SimpleNamespace) -> None:
    """The same without the snapshot: every graph through the per-key lookups."""
    job, plain = _job(jobs, "warm-local-nosnap"), _job(jobs, "plain")
    for rank in range(2):
        assert job.stat(rank, "fxgraph_cache_miss") == 0, job.stats[rank]
        assert job.stat(rank, "fxgraph_cache_hit") == _lookups(plain, rank), job.stats[rank]
    _no_compile_beyond_pytorch(job, _job(jobs, "plain-fxonly"))


def test_no_normalization_cuda1_never_loads_cuda0_entries(jobs: SimpleNamespace) -> None:
    """Without device normalisation rank 1 runs on cuda:1: per-index keys, all misses."""
    job, plain = _job(jobs, "nonorm"), _job(jobs, "plain")
    assert [o["device"] for o in job.outs] == ["cuda:0", "cuda:1"]
    s1 = job.stats[1]
    assert s1["fxgraph_cache_hit"] == 0, s1
    assert s1["fxgraph_cache_miss"] == _lookups(plain, 1), s1
    assert s1["waits"] == 0, s1
    for rank in range(2):
        assert losses_close(job.losses(rank), plain.losses(rank)), (job.outs, plain.outs)


def test_no_normalization_cuda0_keys_match_normalized(jobs: SimpleNamespace) -> None:
    """Rank 0 on cuda:0 finds what the normalised job (every rank on cuda:0) stored."""
    job, plain = _job(jobs, "nonorm"), _job(jobs, "plain")
    s0 = job.stats[0]
    assert s0["fxgraph_cache_miss"] == 0, s0
    assert s0["fxgraph_cache_hit"] == _lookups(plain, 0), s0
    grew = len(store_fx_keys(jobs.urls["local"])) - len(jobs.keys_after_cold["local"])
    assert grew == job.stat(1, "fxgraph_cache_miss"), "rank 1's cuda:1 keys are new keys"


def test_s3_cold_with_fsspec_cycles_broken(jobs: SimpleNamespace) -> None:
    """Diagnosis of the S3 failure under DDP (the cold S3 tests above): the same cold job,
    with the reference cycle of fsspec's `sync()` broken (job_wrapper.py says how), must
    compile each graph once and train right. It passing where they fail names the cause."""
    job, plain = _job(jobs, "cold-s3-nocycle", "s3"), _job(jobs, "plain")
    keys = store_fx_keys(jobs.urls["s3"] + "-nocycle")
    assert keys and job.total("fxgraph_cache_miss") == sum(keys.values()), (job.stats, keys)
    for rank in range(2):
        assert losses_close(job.losses(rank), plain.losses(rank)), (job.outs, plain.outs)
