"""`python preimport.py SCRIPT ARGS`: PyTorch alone, with the work our launcher moves before
the script and nothing else of ours (no store, no hooks, no coordination).

It gives the worker one visible GPU as our launcher does (`coordinator/devices.py`, loaded
as a file: the package itself is not imported), imports what `install()` imports before
the script runs (torch, Dynamo, Inductor's caches), starts Inductor's compile workers and
initialises CUDA as `install()` does, then runs SCRIPT as `python SCRIPT ARGS` would.
Beside `warm-local` and `none` (the same jobs without this), its rows tell whether moving
that work before `main()` costs or saves a job time of its own, or only moves it.
"""

from __future__ import annotations

import importlib.util
import os
import runpy
import sys
from pathlib import Path


def _normalize_devices() -> None:
    """What the launcher does before torch is imported: CUDA reads the variable once."""
    path = Path(__file__).resolve().parents[2] / "coordinator" / "devices.py"
    spec = importlib.util.spec_from_file_location("_pt2cc_devices", path)
    devices = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(devices)  # type: ignore[union-attr]
    os.environ.update(devices.normalize(dict(os.environ)))


_normalize_devices()

import torch  # noqa: E402
import torch._dynamo  # noqa: E402
import torch._inductor.codecache  # noqa: E402
import torch._inductor.remote_cache  # noqa: E402
from torch._inductor import async_compile  # noqa: E402

if hasattr(async_compile, "maybe_warm_pool"):
    async_compile.maybe_warm_pool()

if torch.cuda.is_available():
    torch.cuda.get_device_properties(int(os.environ.get("LOCAL_RANK", "0")))

if __name__ == "__main__":
    sys.argv = sys.argv[1:]
    sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
    runpy.run_path(sys.argv[0], run_name="__main__")
