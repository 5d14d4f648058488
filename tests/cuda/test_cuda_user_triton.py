"""(e) User Triton kernels (triton_op + wrap_triton, an autograd.Function launching one),
regional compilation and per-rank dynamic shapes, cold, warm, and after a kernel edit.

Three jobs in turn against one store, each on a fresh node: cold; warm; and one after the
kernels' module was rewritten with another constant in the kernels' bodies. Every case
checks its compiled result on every rank against plain PyTorch with the constant the
module holds *now*, so a stale artifact (the old kernel) fails the case.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from cuda_jobs import (
    WORKLOADS,
    Job,
    expect_no_kernel_beyond_pytorch,
    fx_only_node,
    kernel_names,
    start,
    store_fx_keys,
    two_gpus,
)
from workloads import CASES, write_kernel_module

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not two_gpus(), reason="needs 2 CUDA GPUs")]

KERNEL_CASES = ("triton_op", "autograd_function")  # the cases whose graphs hold a user kernel


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    work: Path = tmp_path_factory.mktemp("user_triton")
    store, kdir = str(work / "store"), work / "kernels"
    args = ["--kernel-dir", str(kdir)]
    write_kernel_module(kdir, 2.0)
    cold = {"cold": start("cold", work, work / "node-a", WORKLOADS, args, cache=store),
            "plain": start("plain", work, work / "node-plain", WORKLOADS, args, cache=None)}
    done = {name: r.result() for name, r in cold.items()}
    keys = {"cold": store_fx_keys(store)}
    # Beside the warm job: PyTorch alone, warm from a copy of its own FX cache. (Not of the
    # coordinated node's: the coordinator switches on remote-cache configs that are part of
    # Inductor's FX keys, so an uncoordinated job finds none of its entries.)
    later = {"warm": start("warm", work, work / "node-b", WORKLOADS, args, cache=store),
             "plain_fxonly": start("plain-fxonly", work,
                                   fx_only_node(work / "node-plain", work / "node-fxonly"),
                                   WORKLOADS, args, cache=None)}
    done.update({name: r.result() for name, r in later.items()})
    keys["warm"] = store_fx_keys(store)
    write_kernel_module(kdir, 3.0)  # the user edits the kernels: same file, new body
    done["changed"] = start("changed", work, work / "node-c", WORKLOADS, args,
                            cache=store).result()
    keys["changed"] = store_fx_keys(store)
    return SimpleNamespace(keys=keys, **done)


def _case(job: Job, rank: int, case: str) -> dict:
    result = job.outs[rank]["cases"][case]
    if "skipped" in result:
        pytest.skip(result["skipped"])
    return result


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", ["plain", "cold", "warm", "plain_fxonly", "changed"])
def test_case_right_on_every_rank(jobs: SimpleNamespace, name: str, case: str) -> None:
    job: Job = getattr(jobs, name).check()
    for rank in range(2):
        result = _case(job, rank, case)
        assert result["ok"], f"rank {rank}: {result.get('error')}\n{result.get('traceback')}"
        assert job.outs[rank]["scale"] == (3.0 if name == "changed" else 2.0)


def test_cold_each_graph_compiled_on_one_rank(jobs: SimpleNamespace) -> None:
    job = jobs.cold.check()
    assert jobs.keys["cold"], "nothing published"
    assert job.total("fxgraph_cache_miss") == sum(jobs.keys["cold"].values()), job.stats
    compiled = [set(job.compiled_kernels(r)) for r in range(2)]
    assert not compiled[0] & compiled[1], f"compiled on both ranks: {compiled[0] & compiled[1]}"


def test_warm_compiles_no_graph_and_no_inductor_kernel(jobs: SimpleNamespace) -> None:
    job = jobs.warm.check()
    for rank in range(2):
        assert job.stat(rank, "fxgraph_cache_miss") == 0, job.stats[rank]
        assert job.stat(rank, "fxgraph_cache_hit") > 0, job.stats[rank]
        inductor = [k for k in kernel_names(job.compiled_kernels(rank)) if k.startswith("triton_")]
        assert inductor == [], inductor
    assert jobs.keys["warm"] == jobs.keys["cold"]


def test_fx_only_baseline_is_warm(jobs: SimpleNamespace) -> None:
    """The baseline below means something only if PyTorch found its FX graphs."""
    job = jobs.plain_fxonly.check()
    for rank in range(2):
        inductor = job.counters[rank]["inductor"]
        assert inductor.get("fxgraph_cache_miss", 0) == 0, inductor


def test_warm_compiles_no_user_kernel(jobs: SimpleNamespace) -> None:
    """User kernels are launched by the graph's wrapper code through Triton's JIT, outside
    Inductor's Triton bundle: at most those PyTorch alone (warm from its FX cache)
    recompiles are compiled."""
    job, baseline = jobs.warm.check(), jobs.plain_fxonly.check()
    expect_no_kernel_beyond_pytorch(job, baseline)


def test_changed_kernel_invalidates_its_graphs_on_every_rank(jobs: SimpleNamespace) -> None:
    """New keys for the graphs that hold the kernel, compiled once; the others still hit.

    Under the coordinator one rank compiles each new key and the other loads that new
    entry, so "invalidated on every rank" shows as: no rank got the old result (the
    case checks above), the job's compiles equal the new keys, and the checksums moved.
    """
    job, cold = jobs.changed.check(), jobs.cold.check()
    new = set(jobs.keys["changed"]) - set(jobs.keys["warm"])
    assert new, "editing the kernel made no new FX graph key"
    assert job.total("fxgraph_cache_miss") == len(new) > 0, job.stats
    for rank in range(2):
        for case in KERNEL_CASES:
            now, before = _case(job, rank, case), _case(cold, rank, case)
            assert now["checksum"] != before["checksum"], case
            c = now["counters"]
            assert c["fxgraph_cache_miss"] + c["fxgraph_cache_hit"] > 0, (case, c)
        for case in set(CASES) - set(KERNEL_CASES):
            c = _case(job, rank, case)["counters"]
            assert c["fxgraph_cache_miss"] == 0, (case, c)
