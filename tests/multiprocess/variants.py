"""Guarded variants of one FX graph, different on each rank (PyTorch's
`test_cache_load_with_guards_static_bounds`): `adaptive_avg_pool2d` under dynamic shapes
is one FX-graph key whatever the input size, but Inductor specialises its kernel on the
pooling windows' static bounds, so each size below is its own guarded variant.

Rank r runs its own sizes (none shared with the other rank), each after a Dynamo reset so
that the lookup is made again, and records whether the compiled result equals eager: a
variant whose guards fail for a rank and were run anyway would not. `--out PATH` writes
`PATH.rank<R>.json`.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist

RANK = int(os.environ.get("RANK", "0"))
# (height, width) per rank: four variants under one key in all.
SIZES = {0: [(8, 9), (9, 10)], 1: [(10, 11), (11, 13)]}


def pool(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.adaptive_avg_pool2d(x, [5, 7])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--grow", type=int, default=0, help="add this to every size: new variants")
    args = p.parse_args()
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    results = []
    for h, w in ((h + args.grow, w + args.grow) for h, w in SIZES[RANK % 2]):
        torch._dynamo.reset()
        x = torch.rand(1, 4, h, w, generator=torch.Generator().manual_seed(h))
        got = torch.compile(pool, dynamic=True)(x)
        want = pool(x)
        results.append({"size": [h, w], "ok": bool(torch.allclose(got, want, atol=1e-6))})
    with open(f"{args.out}.rank{RANK}.json", "w") as f:
        json.dump({"rank": RANK, "results": results}, f, indent=1)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
