"""`job_wrapper.py SCRIPT ARGS`: run SCRIPT under scripts/bench/counters.py, instrumented.

scripts/bench/counters.py records PyTorch's own counters at exit (PT2CC_BENCH_COUNTERS)
and can switch DDP's graph splitting off (PT2CC_BENCH_OPTIMIZE_DDP). torchrun gives every
rank the same environment; this adds what a test needs to tell the ranks apart:
- PT2CC_TEST_RANK_TRITON_DIRS=1: TRITON_CACHE_DIR becomes `$TRITON_CACHE_DIR/rank<R>`,
  so a kernel one rank compiled can never be a Triton cache hit on the other rank: each
  rank's Triton kernels are its own compiles or come out of a loaded FX graph's bundle.
- PT2CC_TEST_BREAK_FSSPEC_CYCLES=1: a diagnosis, not a fix. fsspec's `sync()` re-raises
  an exception it kept in a list, so exception, traceback and frame form a cycle that
  keeps every caller frame alive until the cyclic GC runs; DDPOptimizer resets
  `fakify_first_call` in a `__del__` of such a frame's local. This clears the frames of
  every exception leaving `sync()`, to show that the S3 failure under DDP is that cycle.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

COUNTERS = Path(__file__).resolve().parents[2] / "scripts" / "bench" / "counters.py"


def _break_fsspec_cycles() -> None:
    import traceback

    import fsspec.asyn

    original = fsspec.asyn.sync

    def sync(*args, **kwargs):
        try:
            return original(*args, **kwargs)
        except BaseException as exc:
            traceback.clear_frames(exc.__traceback__)
            raise

    fsspec.asyn.sync = sync


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: job_wrapper.py SCRIPT [ARGS...]")
    rank = os.environ.get("RANK", "0")
    if os.environ.get("PT2CC_TEST_RANK_TRITON_DIRS") == "1" and os.environ.get("TRITON_CACHE_DIR"):
        os.environ["TRITON_CACHE_DIR"] = os.path.join(os.environ["TRITON_CACHE_DIR"],
                                                      f"rank{rank}")
    if os.environ.get("PT2CC_TEST_BREAK_FSSPEC_CYCLES") == "1":
        _break_fsspec_cycles()
    sys.argv = [str(COUNTERS), *sys.argv[1:]]
    runpy.run_path(str(COUNTERS), run_name="__main__")


if __name__ == "__main__":
    main()
