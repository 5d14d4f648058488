"""A job of one small compiled function whose compile takes SLOW_COMPILE_S longer.

The delay sits in an Inductor post-grad pass, so only a rank that compiles (the claimant)
sleeps: every other rank of the job is sure to be waiting when the claimant publishes.
No process group: the job's c10d store is all the coordinator needs.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass


class Slow(CustomGraphPass):
    def __call__(self, graph: torch.fx.Graph) -> None:
        time.sleep(float(os.environ.get("SLOW_COMPILE_S", "5")))

    def uuid(self) -> bytes:
        return b"slow-v1"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch._inductor.config.post_grad_custom_post_pass = Slow()
    x = torch.arange(12.0).reshape(3, 4)
    y = torch.compile(lambda t: (t.cos() * 2).sum(dim=1))(x)
    rank = int(os.environ["RANK"])
    with open(f"{args.out}.rank{rank}.json", "w") as f:
        json.dump({"rank": rank, "y": y.tolist()}, f)


if __name__ == "__main__":
    main()
