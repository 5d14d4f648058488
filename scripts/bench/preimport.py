"""`python preimport.py SCRIPT ARGS`: PyTorch alone, with the work our launcher moves before
the script and nothing else of ours (no store, no hooks, no coordination).

It imports what `install()` imports before the script runs (torch, Dynamo, Inductor's
caches), starts Inductor's compile workers and initialises CUDA as `install()` does, then
runs SCRIPT as `python SCRIPT ARGS` would. Beside `warm-local` and `none` (the same jobs
without this), its rows tell whether moving that work before `main()` costs or saves a job
time of its own, or only moves it.
"""

from __future__ import annotations

import os
import runpy
import sys

import torch
import torch._dynamo
import torch._inductor.codecache
import torch._inductor.remote_cache
from torch._inductor import async_compile

if hasattr(async_compile, "maybe_warm_pool"):
    async_compile.maybe_warm_pool()

if torch.cuda.is_available():
    torch.cuda.get_device_properties(int(os.environ.get("LOCAL_RANK", "0")))

if __name__ == "__main__":
    sys.argv = sys.argv[1:]
    sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
    runpy.run_path(sys.argv[0], run_name="__main__")
