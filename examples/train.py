"""A small GPT trained on random tokens with ``torch.compile``, on one or many ranks.

It exists to exercise pt2-cache-coordinator: every rank compiles the same graphs, so the
time to the first finished step shows what a shared compile cache saves. It runs as
``python examples/train.py`` (one process) or under ``torchrun`` (NCCL on GPUs, gloo on
CPU), and needs nothing downloaded.
"""

# The start time is taken before the heavy imports, on purpose.
# ruff: noqa: E402
from __future__ import annotations

import time

# Taken before the heavy imports so that import time counts towards time-to-first-step.
_MODULE_T0 = time.time()

import argparse
import gc
import json
import math
import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP


@dataclass(frozen=True)
class GPTConfig:
    vocab: int
    seq: int
    layers: int
    d_model: int
    heads: int


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        # (B, T, C) -> (B, H, T, C/H), the layout scaled_dot_product_attention expects.
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).contiguous().view(b, t, c))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, 4 * cfg.d_model),
            nn.GELU(),
            nn.Linear(4 * cfg.d_model, cfg.d_model),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab, cfg.d_model)
        self.pos = nn.Embedding(cfg.seq, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab, bias=False)
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        pos = torch.arange(t, device=idx.device)
        x = self.tok(idx) + self.pos(pos)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--dynamic", action="store_true", help="torch.compile(dynamic=True)")
    p.add_argument(
        "--batch-per-rank",
        default=None,
        help='comma-separated batch size per rank, e.g. "4,6", so that ranks see different shapes',
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    p.add_argument("--parallel", choices=("ddp", "fsdp2", "none"), default="ddp",
                   help="with ranks > 1: DDP over torch.compile (default); FSDP2, which shards "
                        "and compiles each block (torchtitan's pattern), then shards the root, "
                        "bf16 parameters on GPU; or none (each rank trains alone)")
    p.add_argument("--out", default=None, help="each rank writes PATH.rank<R>.json")
    args = p.parse_args(argv)
    if args.d_model % args.heads:
        p.error(f"--d-model {args.d_model} is not divisible by --heads {args.heads}")
    return args


def batch_for_rank(args: argparse.Namespace, rank: int) -> int:
    if not args.batch_per_rank:
        return args.batch
    sizes = [int(s) for s in args.batch_per_rank.split(",") if s.strip()]
    # Ranks beyond the list reuse its last entry, so "4,6" still works on 8 ranks.
    return sizes[min(rank, len(sizes) - 1)]


def pick_device(local_rank: int) -> tuple[torch.device, str]:
    if torch.cuda.is_available():
        # One visible GPU per process (as the coordinator's launcher arranges) means cuda:0.
        index = local_rank if torch.cuda.device_count() > 1 else 0
        torch.cuda.set_device(index)
        return torch.device("cuda", index), "nccl"
    return torch.device("cpu"), "gloo"


def start_time() -> float:
    # A launcher sets PT2CC_T0 so that torchrun's own start-up counts as well.
    t0 = os.environ.get("PT2CC_T0")
    if t0:
        try:
            return float(t0)
        except ValueError:
            pass
    return _MODULE_T0


class CpuUse:
    """CPU seconds from `main()` to step 1: this process (every thread), its main thread,
    and the garbage collector's pauses, to tell where extra seconds of a start go."""

    def __init__(self) -> None:
        self._process, self._thread = time.process_time(), time.thread_time()
        self._gc_s, self._gc_started = 0.0, 0.0
        self._collections = [0, 0, 0]
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self._gc_s += time.perf_counter() - self._gc_started
            self._collections[info["generation"]] += 1

    def until_now(self) -> dict:
        gc.callbacks.remove(self._on_gc)
        return {"process_s": round(time.process_time() - self._process, 3),
                "main_thread_s": round(time.thread_time() - self._thread, 3),
                "gc_s": round(self._gc_s, 3), "gc_collections": self._collections}


def main(argv: list[str] | None = None) -> None:
    t0 = start_time()
    time_to_main = time.time() - t0
    cpu = CpuUse()
    args = parse_args(argv)
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device, backend = pick_device(local_rank)
    if distributed:
        dist.init_process_group(
            backend=backend, device_id=device if device.type == "cuda" else None
        )

    cfg = GPTConfig(args.vocab, args.seq, args.layers, args.d_model, args.heads)
    torch.manual_seed(args.seed)  # identical weights on every rank; DDP would also broadcast
    model: nn.Module = GPT(cfg).to(device)
    dynamic = True if args.dynamic else None
    compiled: nn.Module
    if args.parallel == "fsdp2" and distributed:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if device.type == "cuda" else MixedPrecisionPolicy())
        for block in model.blocks:
            block.compile(dynamic=dynamic)
            fully_shard(block, mp_policy=mp)
        compiled = fully_shard(model, mp_policy=mp)
    else:
        if world_size > 1 and args.parallel == "ddp":
            model = DDP(model)
        compiled = torch.compile(model, dynamic=dynamic)

    if args.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=args.lr)

    gen = torch.Generator().manual_seed(args.seed + rank)
    batch = batch_for_rank(args, rank)
    autocast: AbstractContextManager[object] = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    )

    losses: list[float] = []
    step_times: list[float] = []
    time_to_step1 = math.nan
    cpu_to_step1: dict = {}
    for step in range(1, args.steps + 1):
        tokens = torch.randint(0, args.vocab, (batch, args.seq + 1), generator=gen)
        tokens = tokens.to(device)
        ts = time.perf_counter()
        with autocast:
            loss = compiled(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_value = loss.item()  # synchronises the device, so the step time is real
        dt = time.perf_counter() - ts
        if step == 1:
            time_to_step1 = time.time() - t0
            cpu_to_step1 = cpu.until_now()
        losses.append(loss_value)
        step_times.append(dt)
        print(f"rank {rank} step {step} loss {loss_value:.6f} time {dt:.2f}s", flush=True)

    if args.out:
        out = Path(f"{args.out}.rank{rank}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "rank": rank,
            "world_size": world_size,
            "device": str(device),
            "losses": losses,
            "step_times_s": step_times,
            "time_to_step1_s": time_to_step1,
            "time_to_main_s": time_to_main,  # launch, imports and launcher before main()
            "cpu_to_step1": cpu_to_step1,  # from main() on
            # Seconds per phase that Dynamo timed (summed): where the first step went.
            "compile_phases_s": {name: round(sum(times), 4) for name, times in
                                 torch._dynamo.utils.compilation_time_metrics.items()},
            # PyTorch's own cache counters: a warm job should have hits and no misses.
            "cache_counts": {name: n for group in ("inductor", "aot_autograd") for name, n
                             in torch._dynamo.utils.counters[group].items()
                             if "cache" in name},
        }
        out.write_text(json.dumps(record, indent=1) + "\n")

    if distributed:
        # A PyTorch race, not ours: DDP's reducer, freed with the GIL held, destroys the
        # gloo group if it holds the group's last reference, and the group joins a gloo
        # worker that may still be releasing the last backward's all-reduce, whose captured
        # thread-local state holds a Python object and so needs the GIL: both wait forever.
        # A barrier lets the workers drain; the model goes before the group, so that the
        # group's last reference goes in destroy_process_group(), which releases the GIL.
        dist.barrier()
        del compiled, model
        gc.collect()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
