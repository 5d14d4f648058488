"""A tiny torchrun job for the fault tests: compiles f, then (optionally) g, on every rank.

Each rank writes `<out>.rank<R>.json` with its compiled and eager results. Options make
one rank misbehave in one way, so that one job covers one scenario:

--pause DIR        after f, write DIR/f-done.rank<R> and wait for DIR/go before g
--second           also compile g (a second FX graph)
--raise-once DIR   the first rank to reach Inductor's post-grad pass raises there (the
                   claimant); Dynamo's suppress_errors makes it run eagerly
--die-after-f R    rank R exits 3 after compiling f, on torchrun's first attempt only
--kill-waiter      on the first attempt, a rank that starts waiting for a peer's compile
                   is SIGKILLed
--late R           rank R starts compiling only once DIR/f-done.rank0 exists (with --pause)
--fresh-local      each torchrun attempt gets its own Inductor cache dir (a fresh node)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

RANK = int(os.environ.get("RANK", "0"))
ATTEMPT = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def f(t):
    return (t.sin() + 1).sum(dim=1)


def g(t):
    return (t.cos() * 3 - t).relu()


def wait_for(path: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            sys.exit(f"fault_job: {path} did not appear in {timeout_s} s")
        time.sleep(0.05)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--pause")
    p.add_argument("--second", action="store_true")
    p.add_argument("--raise-once")
    p.add_argument("--die-after-f", type=int)
    p.add_argument("--kill-waiter", action="store_true")
    p.add_argument("--late", type=int)
    p.add_argument("--fresh-local", action="store_true")
    args = p.parse_args()

    if args.fresh_local:
        base = os.environ["TORCHINDUCTOR_CACHE_DIR"]
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(base, f"attempt{ATTEMPT}")

    import torch

    if args.raise_once:
        from torch._inductor.custom_graph_pass import CustomGraphPass

        marker = os.path.join(args.raise_once, "raised")

        class RaiseOnce(CustomGraphPass):
            def __call__(self, graph: torch.fx.Graph) -> None:
                try:
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    return
                os.write(fd, str(RANK).encode())
                os.close(fd)
                raise RuntimeError(f"injected compile error on rank {RANK}")

            def uuid(self) -> bytes:
                return b"pt2cc-faults-raise-once-v1"

        torch._inductor.config.post_grad_custom_post_pass = RaiseOnce()
        torch._dynamo.config.suppress_errors = True

    if args.kill_waiter and ATTEMPT == 0:
        from coordinator.single_flight import SingleFlight

        def killed_while_waiting(self, kind, key, compile_id=None):
            with open(f"{args.out}.killed.rank{RANK}", "w") as fh:
                fh.write(key)
            os.kill(os.getpid(), signal.SIGKILL)

        SingleFlight.wait = killed_while_waiting

    if args.late is not None and args.late == RANK:
        wait_for(os.path.join(args.pause, "f-done.rank0"))

    x = torch.arange(12.0).reshape(3, 4) / 7
    t0 = time.monotonic()
    yf = torch.compile(f)(x)
    f_s = time.monotonic() - t0
    if args.die_after_f == RANK and ATTEMPT == 0:
        sys.exit(3)
    if args.pause:
        open(os.path.join(args.pause, f"f-done.rank{RANK}"), "w").close()
        if args.late is None:
            wait_for(os.path.join(args.pause, "go"))
    result = {"rank": RANK, "attempt": ATTEMPT, "f": yf.tolist(), "f_eager": f(x).tolist(),
              "f_s": f_s}
    if args.second:
        t0 = time.monotonic()
        result["g"] = torch.compile(g)(x).flatten().tolist()
        result["g_s"] = time.monotonic() - t0
        result["g_eager"] = g(x).flatten().tolist()
    with open(f"{args.out}.rank{RANK}.json", "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main()
