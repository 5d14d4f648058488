"""`job_wrapper.py SCRIPT ARGS`: run SCRIPT as `python SCRIPT ARGS` would, instrumented.

torchrun gives every rank the same environment; this gives each rank what a test needs
to tell the ranks apart:
- PT2CC_TEST_RANK_TRITON_DIRS=1: TRITON_CACHE_DIR becomes `$TRITON_CACHE_DIR/rank<R>`,
  so a kernel one rank compiled can never be a Triton cache hit on the other rank: each
  rank's Triton kernels are its own compiles or come out of a loaded FX graph's bundle.
- PT2CC_TEST_COUNTERS=PATH: at exit, PyTorch's own counters (`torch._dynamo.utils.counters`,
  inductor and aot_autograd) go to PATH.rank<R>.json, with the reasons AOTAutograd gave
  for bypassing its cache.
- PT2CC_TEST_OPTIMIZE_DDP=0: `torch._dynamo.config.optimize_ddp = False` before the
  script runs (DDP's graph splitting off), for the warm-start measurements.
- PT2CC_TEST_BREAK_FSSPEC_CYCLES=1: a diagnosis, not a fix. fsspec's `sync()` re-raises
  an exception it kept in a list, so exception, traceback and frame form a cycle that
  keeps every caller frame alive until the cyclic GC runs; DDPOptimizer resets
  `fakify_first_call` in a `__del__` of such a frame's local. This clears the frames of
  every exception leaving `sync()`, to show that the S3 failure under DDP is that cycle.
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import os
import runpy
import sys

_bypass_reasons: collections.Counter[str] = collections.Counter()


class _BypassReasons(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Bypassing autograd cache"):
            _bypass_reasons[message.split(" due to: ", 1)[-1][:300]] += 1


def _dump_counters(path: str) -> None:
    try:
        from torch._dynamo.utils import counters
    except Exception:  # noqa: BLE001 - torch never imported: nothing to say
        return
    rank = os.environ.get("RANK", "0")
    record = {
        "rank": int(rank),
        "triton_cache_dir": os.environ.get("TRITON_CACHE_DIR"),
        "inductor": dict(counters["inductor"]),
        "aot_autograd": dict(counters["aot_autograd"]),
        "autograd_cache_bypass_reasons": dict(_bypass_reasons),
    }
    target = f"{path}.rank{rank}.json"
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    with open(target + ".tmp", "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    os.replace(target + ".tmp", target)


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
    script, args = sys.argv[1], sys.argv[2:]
    rank = os.environ.get("RANK", "0")
    if os.environ.get("PT2CC_TEST_RANK_TRITON_DIRS") == "1" and os.environ.get("TRITON_CACHE_DIR"):
        os.environ["TRITON_CACHE_DIR"] = os.path.join(os.environ["TRITON_CACHE_DIR"],
                                                      f"rank{rank}")
    import torch

    aot_log = logging.getLogger("torch._functorch._aot_autograd.autograd_cache")
    aot_log.setLevel(logging.INFO)
    aot_log.addHandler(_BypassReasons())
    aot_log.propagate = False  # collected here, not printed
    if os.environ.get("PT2CC_TEST_OPTIMIZE_DDP") == "0":
        import torch._dynamo.config

        torch._dynamo.config.optimize_ddp = False
    if os.environ.get("PT2CC_TEST_BREAK_FSSPEC_CYCLES") == "1":
        _break_fsspec_cycles()
    if path := os.environ.get("PT2CC_TEST_COUNTERS"):
        atexit.register(_dump_counters, path)
    sys.argv = [script, *args]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
