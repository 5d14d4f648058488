"""A job whose compiling rank is killed (SIGKILL) in the middle of its first compile.

The kill sits in an Inductor post-grad pass, so it fires only on a rank that compiles
(the claimant), and only in torchrun's first attempt (TORCHELASTIC_RESTART_COUNT=0).
"""

from __future__ import annotations

import argparse
import json
import os
import signal

import torch
import torch.distributed as dist
from torch._inductor.custom_graph_pass import CustomGraphPass


class KillOnFirstAttempt(CustomGraphPass):
    def __call__(self, graph: torch.fx.Graph) -> None:
        if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
            os.kill(os.getpid(), signal.SIGKILL)

    def uuid(self) -> bytes:
        return b"kill-on-first-attempt-v1"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    args = p.parse_args()
    dist.init_process_group("gloo")
    torch._inductor.config.post_grad_custom_post_pass = KillOnFirstAttempt()
    x = torch.arange(12.0).reshape(3, 4)
    y = torch.compile(lambda t: (t.sin() + 1).sum(dim=1))(x)
    rank = dist.get_rank()
    with open(f"{args.out}.rank{rank}.json", "w") as f:
        json.dump({"rank": rank, "y": y.tolist(),
                   "restart": int(os.environ["TORCHELASTIC_RESTART_COUNT"])}, f)
    dist.barrier()  # see examples/train.py: drain gloo before teardown
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
