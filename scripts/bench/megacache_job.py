"""Mega-Cache by hand, in the two in-job forms a user would write (for scripts/bench.py).

The model, data and step are examples/train.py's (imported, not copied); only what
happens around step 1 differs:

``--mode broadcast``  rank 0 compiles alone and runs step 1, saves
    ``torch.compiler.save_cache_artifacts()`` and broadcasts the bytes; the other ranks
    wait in that broadcast, load the bytes, then run step 1. Under DDP this deadlocks:
    rank 0's backward all-reduces gradients with ranks that sit in the broadcast.
``--mode save``  every rank compiles; rank 0 writes the Mega-Cache bytes to ``--file``
    after step 1 (what a user keeps for the next job).
``--mode load``  every rank loads ``--file`` before its first step (the next job, on a
    fresh node), then trains as usual.

Each rank writes ``--out``.rank<R>.json like train.py, plus the bytes it read or wrote.
"""

# ruff: noqa: E402
from __future__ import annotations

import time

_MODULE_T0 = time.time()

import argparse
import json
import math
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "examples"))

import torch
import torch.distributed as dist
import train  # examples/train.py
from torch.nn.parallel import DistributedDataParallel as DDP


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=("broadcast", "save", "load"), required=True)
    p.add_argument("--file", required=True, help="the Mega-Cache bytes (save/load modes)")
    ours, rest = p.parse_known_args()
    args = train.parse_args(rest)
    t0 = float(os.environ.get("PT2CC_T0", _MODULE_T0))

    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dist.init_process_group("gloo")
    record: dict[str, object] = {"rank": rank, "world_size": world, "mode": ours.mode,
                                 "megacache_bytes_read": 0, "megacache_bytes_written": 0}

    if ours.mode == "load":
        blob = Path(ours.file).read_bytes()
        torch.compiler.load_cache_artifacts(blob)
        record["megacache_bytes_read"] = len(blob)

    cfg = train.GPTConfig(args.vocab, args.seq, args.layers, args.d_model, args.heads)
    torch.manual_seed(args.seed)
    model = DDP(train.GPT(cfg))
    compiled = torch.compile(model, dynamic=True if args.dynamic else None)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed + rank)
    batch = train.batch_for_rank(args, rank)

    def step() -> float:
        tokens = torch.randint(0, args.vocab, (batch, args.seq + 1), generator=gen)
        loss = compiled(tokens[:, :-1], tokens[:, 1:])
        if ours.mode == "broadcast" and not losses:
            print(f"rank {rank}: forward compiled; backward (DDP all-reduces)", flush=True)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    losses: list[float] = []
    time_to_step1 = math.nan
    if ours.mode == "broadcast":
        # The obvious form: rank 0 compiles (runs step 1) while the others wait for its bytes.
        if rank == 0:
            losses.append(step())
            time_to_step1 = time.time() - t0
            print("rank 0: step 1 done; saving the Mega-Cache", flush=True)
            saved = torch.compiler.save_cache_artifacts()
            box: list[object] = [saved[0] if saved else b""]
        else:
            box = [None]
        print(f"rank {rank}: entering the broadcast of the Mega-Cache bytes", flush=True)
        dist.broadcast_object_list(box, src=0)  # rank 0 never gets here: DDP's all-reduce
        blob = box[0]
        assert isinstance(blob, bytes)
        if rank != 0:
            torch.compiler.load_cache_artifacts(blob)
            record["megacache_bytes_read"] = len(blob)
            losses.append(step())
            time_to_step1 = time.time() - t0
    else:
        losses.append(step())
        time_to_step1 = time.time() - t0
        if ours.mode == "save" and rank == 0:
            saved = torch.compiler.save_cache_artifacts()
            blob = saved[0] if saved else b""
            tmp = Path(f"{ours.file}.tmp")
            tmp.write_bytes(blob)
            tmp.replace(ours.file)
            record["megacache_bytes_written"] = len(blob)
    for _ in range(1, args.steps):
        losses.append(step())

    record.update(losses=losses, time_to_step1_s=time_to_step1)
    if args.out:
        Path(f"{args.out}.rank{rank}.json").write_text(json.dumps(record, indent=1) + "\n")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
