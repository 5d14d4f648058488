"""The seed scenarios (PyTorch's AOTAutograd-cache tests) run on every rank of a real job.

Each scenario is computed eagerly and compiled, forward and backward, and each rank
records whether the two agree. Run under `torchrun [-m coordinator ...]`; `--out PATH`
writes `PATH.rank<R>.json`. Rank r uses its own sizes where a scenario says so, so that
ranks whose inputs differ are covered too.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

RANK = int(os.environ.get("RANK", "0"))


class ScaleGrad(torch.autograd.Function):
    """A custom autograd.Function: forward doubles, backward scales by three."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 3 + x.sin() * 0


def autograd_function(x: torch.Tensor) -> torch.Tensor:
    return ScaleGrad.apply(x.cos()).sum(dim=-1)


def graph_break(x: torch.Tensor) -> torch.Tensor:
    y = x.relu() * 3
    torch._dynamo.graph_break()
    return (y + 1).tanh()


def view_replay(x: torch.Tensor) -> torch.Tensor:
    y = x.mul(2)
    return y.view(-1)[: y.numel() // 2]


def specialize(x: torch.Tensor) -> torch.Tensor:
    # A branch on a size: under dynamic=True the symbol is guarded, not traced as a constant.
    if x.shape[0] % 2 == 0:
        return x.sin() * x.shape[0]
    return x.cos() - x.shape[0]


def saved_tensor_hooks(x: torch.Tensor) -> torch.Tensor:
    return (x * x.exp()).sum(dim=0)


class WithBuffers(nn.Module):
    """Parameters and a running buffer that training mode mutates."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.norm = nn.BatchNorm1d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.lin(x)).relu()


def _pack(t: torch.Tensor) -> torch.Tensor:
    return t * 1.0


def _unpack(t: torch.Tensor) -> torch.Tensor:
    return t + 0.0


def compare(name: str, fn: Callable, make_input: Callable[[], torch.Tensor], *,
            dynamic: bool | None = None, hooks: bool = False) -> dict:
    """Run fn eagerly and compiled on equal inputs; forward and input gradients must agree."""
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        x = make_input().requires_grad_(True)
        f = torch.compile(fn, dynamic=dynamic) if compiled else fn
        ctx = torch.autograd.graph.saved_tensors_hooks(_pack, _unpack) if hooks else _null()
        with ctx:
            y = f(x)
            y.float().sum().backward()
        results.append((y.detach(), x.grad.detach()))
    (ye, ge), (yc, gc) = results
    ok = torch.allclose(ye, yc, rtol=1e-4, atol=1e-5) and torch.allclose(ge, gc, rtol=1e-4,
                                                                          atol=1e-5)
    return {"name": name, "ok": bool(ok), "max_err": float((ye - yc).abs().max())}


def module_case(ddp: bool) -> dict:
    """nn.Module with parameters and buffers (wrapped in DDP when a process group exists)."""
    outs = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = WithBuffers()
        wrapped = nn.parallel.DistributedDataParallel(model) if ddp else model
        step = torch.compile(wrapped) if compiled else wrapped
        torch.manual_seed(1)  # same data on every rank: DDP's averaged gradient is then exact
        for _ in range(2):
            model.zero_grad()
            step(torch.randn(4, 8)).sum().backward()
        outs.append((model.lin.weight.grad.clone(), model.norm.running_mean.clone()))
    (ge, be), (gc, bc) = outs
    ok = torch.allclose(ge, gc, rtol=1e-4, atol=1e-5) and torch.allclose(be, bc, rtol=1e-4,
                                                                          atol=1e-5)
    return {"name": "module_buffers" + ("_ddp" if ddp else ""), "ok": bool(ok)}


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    args = p.parse_args()
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    own = 3 + 2 * RANK  # rank 0: 3 rows, rank 1: 5 rows: inputs that differ across ranks
    results = [
        compare("autograd_function", autograd_function, lambda: torch.randn(4, 8)),
        compare("graph_break", graph_break, lambda: torch.randn(4, 8)),
        compare("view_replay", view_replay, lambda: torch.randn(4, 8)),
        compare("saved_tensor_hooks", saved_tensor_hooks, lambda: torch.randn(4, 8), hooks=True),
        compare("specialize", specialize, lambda: torch.randn(own + 1, 8), dynamic=True),
        compare("static_per_rank_sizes", autograd_function, lambda: torch.randn(own, 8)),
        compare("dynamic_per_rank_sizes", graph_break, lambda: torch.randn(own, 8), dynamic=True),
        module_case(ddp=distributed),
    ]
    with open(f"{args.out}.rank{RANK}.json", "w") as f:
        json.dump({"rank": RANK, "results": results}, f, indent=1)
    if distributed:
        dist.barrier()  # see examples/train.py: drain gloo before teardown
        dist.destroy_process_group()


if __name__ == "__main__":
    torch._functorch.config.view_replay_for_aliased_outputs = True
    main()
