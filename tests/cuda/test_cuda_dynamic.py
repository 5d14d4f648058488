"""(d) Dynamic shapes with a different batch size on each rank (examples/train.py --dynamic).

Both ranks trace the same graphs with a symbolic batch; one compiles, the other loads the
entry and PyTorch evaluates its guards against the other rank's sizes. The job must not
hang, and the losses must be those of a job without the coordinator.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from cuda_jobs import (
    TRAIN,
    expect_no_kernel_beyond_pytorch,
    fx_only_node,
    losses_close,
    start,
    store_fx_keys,
    two_gpus,
)

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not two_gpus(), reason="needs 2 CUDA GPUs")]

ARGS = ["--layers", "2", "--d-model", "128", "--heads", "4", "--seq", "64", "--steps", "3",
        "--dynamic", "--batch-per-rank", "4,6"]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    work: Path = tmp_path_factory.mktemp("dynamic")
    store = str(work / "store")
    cold = {"plain": start("plain", work, work / "node-plain", TRAIN, ARGS, cache=None),
            "cold": start("cold", work, work / "node-a", TRAIN, ARGS, cache=store)}
    done = {name: r.result() for name, r in cold.items()}
    keys = store_fx_keys(store) if done["cold"].ok else {}
    later = {"warm": start("warm", work, work / "node-b", TRAIN, ARGS, cache=store),
             "plain-fxonly": start("plain-fxonly", work,
                                   fx_only_node(work / "node-plain", work / "node-fxonly"),
                                   TRAIN, ARGS, cache=None)}
    done.update({name: r.result() for name, r in later.items()})
    return SimpleNamespace(store=store, keys=keys,
                           **{name.replace("-", "_"): job for name, job in done.items()})


def test_dynamic_cold_no_hang_and_right_losses(jobs: SimpleNamespace) -> None:
    job, plain = jobs.cold.check(), jobs.plain.check()
    for rank in range(2):
        assert losses_close(job.losses(rank), plain.losses(rank)), (job.outs, plain.outs)


def test_dynamic_cold_each_graph_compiled_once(jobs: SimpleNamespace) -> None:
    job = jobs.cold.check()
    assert jobs.keys, "nothing published"
    assert job.total("fxgraph_cache_miss") == sum(jobs.keys.values()), (job.stats, jobs.keys)


def test_dynamic_fresh_node_guards_pass_on_both_ranks(jobs: SimpleNamespace) -> None:
    """Batch 4 on rank 0, 6 on rank 1: the stored entries' guards hold for both."""
    job, plain = jobs.warm.check(), jobs.plain.check()
    for rank in range(2):
        s = job.stats[rank]
        assert s["fxgraph_cache_miss"] == 0, s
        assert losses_close(job.losses(rank), plain.losses(rank)), (job.outs, plain.outs)


def test_dynamic_fresh_node_compiles_no_triton_kernel(jobs: SimpleNamespace) -> None:
    job, baseline = jobs.warm.check(), jobs.plain_fxonly.check()
    expect_no_kernel_beyond_pytorch(job, baseline)
