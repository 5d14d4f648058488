"""`counters.py SCRIPT ARGS`: run SCRIPT as `python SCRIPT ARGS` would, and at exit write
PyTorch's own compile counters, for the rows of the GPU scripts that run no coordinator.

torchrun gives every rank the same environment; this reads per job:
- PT2CC_BENCH_COUNTERS=PATH: at exit, `torch._dynamo.utils.counters` (inductor,
  aot_autograd) and the reasons AOTAutograd gave for bypassing its cache go to
  PATH.rank<R>.json.
- PT2CC_BENCH_OPTIMIZE_DDP=0: `torch._dynamo.config.optimize_ddp = False` before the
  script runs (DDP's graph splitting off).
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


def _dump(path: str) -> None:
    from torch._dynamo.utils import counters

    rank = os.environ.get("RANK", "0")
    record = {"rank": int(rank), "triton_cache_dir": os.environ.get("TRITON_CACHE_DIR"),
              "inductor": dict(counters["inductor"]),
              "aot_autograd": dict(counters["aot_autograd"]),
              "autograd_cache_bypass_reasons": dict(_bypass_reasons)}
    target = f"{path}.rank{rank}.json"
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    with open(target + ".tmp", "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    os.replace(target + ".tmp", target)


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: counters.py SCRIPT [ARGS...]")
    script, args = sys.argv[1], sys.argv[2:]
    import torch  # first, so that torch's own logging set-up runs before ours

    log = logging.getLogger("torch._functorch._aot_autograd.autograd_cache")
    log.setLevel(logging.INFO)
    log.addHandler(_BypassReasons())
    log.propagate = False  # collected here, not printed
    if os.environ.get("PT2CC_BENCH_OPTIMIZE_DDP") == "0":
        import torch._dynamo.config

        torch._dynamo.config.optimize_ddp = False
    if path := os.environ.get("PT2CC_BENCH_COUNTERS"):
        atexit.register(_dump, path)
    sys.argv = [script, *args]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
