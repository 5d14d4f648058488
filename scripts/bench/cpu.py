"""Run one torchrun worker as a child and record the CPU time of its whole process tree.

Used as ``torchrun --no-python python scripts/bench/cpu.py -- python [-m coordinator] ...``
so that every row of scripts/bench.py is measured the same way: user + system CPU seconds
of the worker and of every descendant it waited for (``os.wait4`` on the child: the C++
compiler runs Inductor launches are included; torchrun's own agent is not). Writes
``$PT2CC_BENCH_CPU.rank<R>.json``. Imports no torch, so it adds no start-up of its own.
With ``PT2CC_BENCH_PROFILE`` set, the worker runs under cProfile and writes
``$PT2CC_BENCH_PROFILE.rank<R>.prof``; with ``PT2CC_BENCH_SAMPLE`` set, under py-spy, which
samples every thread, native frames and the compilers it runs
(``$PT2CC_BENCH_SAMPLE.rank<R>.txt``, collapsed stacks naming process and thread): what
cProfile of the main thread cannot see, such as another thread holding the GIL.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("usage: cpu.py -- COMMAND [ARGS]", file=sys.stderr)
        return 2
    if prof := os.environ.get("PT2CC_BENCH_PROFILE"):
        # The worker's main thread under cProfile: COMMAND is a Python interpreter.
        argv = [argv[0], "-m", "cProfile", "-o",
                f"{prof}.rank{os.environ.get('RANK', '0')}.prof", *argv[1:]]
    if sample := os.environ.get("PT2CC_BENCH_SAMPLE"):
        spy = shutil.which("py-spy")
        if spy is None:
            print("cpu.py: PT2CC_BENCH_SAMPLE is set but py-spy is not installed", file=sys.stderr)
            return 2
        argv = [spy, "record", "--rate", "200", "--threads", "--subprocesses", "--native",
                "--format", "raw", "-o", f"{sample}.rank{os.environ.get('RANK', '0')}.txt",
                "--", *argv]
    child = subprocess.Popen(argv)

    def forward(signum: int, _frame: object) -> None:
        # torchrun ends a worker with SIGTERM: pass it on, then report what the child used.
        child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    while True:
        try:
            _, status, usage = os.wait4(child.pid, 0)
            break
        except InterruptedError:
            continue
    child.returncode = os.waitstatus_to_exitcode(status)
    out = os.environ.get("PT2CC_BENCH_CPU")
    if out:
        rank = os.environ.get("RANK", "0")
        record = {
            "rank": int(rank),
            "cpu_user_s": usage.ru_utime,
            "cpu_sys_s": usage.ru_stime,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "max_rss_kib": usage.ru_maxrss,
            "exit": child.returncode,
        }
        with open(f"{out}.rank{rank}.json", "w") as f:
            json.dump(record, f)
    rc = child.returncode
    return 128 - rc if rc < 0 else rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
