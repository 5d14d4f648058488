"""A job of one small compiled function whose compiling rank (the claimant) can be killed
or slowed in the middle of its compile.

The fault sits in an Inductor post-grad pass, so it fires only on a rank that compiles:
- DIE_ONCE_MARKER=PATH: SIGKILL, once per marker file; whoever compiles after that (a
  survivor or a restarted group) compiles normally.
- SLOW_COMPILE_S=S: sleep S seconds, so every other rank is surely waiting at the publish.
No process group unless `--group` (gloo, from the environment, as a training script
starts one): the job's c10d store (torchrun's, or the test's) is all the coordinator needs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass


class ClaimantFault(CustomGraphPass):
    def __call__(self, graph: torch.fx.Graph) -> None:
        time.sleep(float(os.environ.get("SLOW_COMPILE_S", "0")))
        marker = os.environ.get("DIE_ONCE_MARKER")
        if marker is None:
            return
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)

    def uuid(self) -> bytes:
        return b"claimant-fault-v1"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--group", action="store_true", help="start a gloo process group first")
    args = p.parse_args()
    if args.group:
        torch.distributed.init_process_group("gloo")
    torch._inductor.config.post_grad_custom_post_pass = ClaimantFault()
    x = torch.arange(12.0).reshape(3, 4)
    y = torch.compile(lambda t: (t.sin() + 1).sum(dim=1))(x)
    rank = int(os.environ["RANK"])
    with open(f"{args.out}.rank{rank}.json", "w") as f:
        json.dump({"rank": rank, "y": y.tolist(),
                   "restart": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))}, f)
    if args.group:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
