"""Waiting wasted on variants that cannot fit: ranks that each need their own variants.

Each rank of tests/multiprocess/variants.py needs its own guarded variants of one FX graph
(sizes the other rank never runs), so a wait for the other rank's compile yields a
variant whose guards fail: every second waited is wasted. Two 2-rank jobs on one node
and store: `cold` (empty store) and `new-sizes` (sizes no job has compiled, with the
cold job's variants stored). Reports per job the waits, seconds waited, loads after a
wait, waits skipped (the rank knew the claimant's variant could not fit), wasted seconds
and compiles, summed over ranks. Writes OUT/wasted-wait-<machine>.{json,md}.

    .venv/bin/python scripts/bench/wasted_wait.py [--out-dir docs/results]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import harness

VARIANTS = harness.REPO / "tests" / "multiprocess" / "variants.py"
JOBS = {"cold": [], "new-sizes": ["--grow", "3"]}
COLUMNS = ("waits", "waited_s", "loaded_after_wait", "waits_skipped", "wasted_wait_s",
           "fxgraph_cache_miss")
TIMEOUT_S = 600.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default=str(harness.RESULTS))
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="wasted-wait-"))
    node, store = work / "node", work / "store"
    results = {}
    for job, args in JOBS.items():
        out = work / job
        out.mkdir(parents=True)
        cmd = [*harness.torchrun(2), *harness.coordinator(str(store), out / "stats"),
               str(VARIANTS), *args, "--out", str(out / "out")]
        rc, wall = harness.run(cmd, harness.job_env(node, {"OMP_NUM_THREADS": "1"}),
                               work / f"{job}.log", TIMEOUT_S)
        ranks = harness.read_ranks(out / "stats", 2).values()
        if rc != 0 or len(ranks) != 2:
            print(harness.log_tail(work / f"{job}.log"), file=sys.stderr)
            harness.clean_up(work, keep=True, note=f" ({job} failed: {rc})")
            return 1
        results[job] = {c: round(sum(r[c] for r in ranks), 2) for c in COLUMNS}
        results[job]["wall_s"] = round(wall, 1)
    machine = harness.machine_name(harness.machine_info())
    lines = ["# Waiting wasted on variants that cannot fit", "",
             f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}; {machine}; "
             "tests/multiprocess/variants.py, 2 ranks, each needing its own variants of one "
             "FX graph; sums over both ranks.", ""]
    lines += harness.md_table(["job", *COLUMNS, "wall_s"],
                              ([job, *v.values()] for job, v in results.items()),
                              align="l" + "r" * (len(COLUMNS) + 1))
    out_dir = Path(a.out_dir)
    (out_dir / f"wasted-wait-{machine}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out_dir / f"wasted-wait-{machine}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    harness.clean_up(work, keep=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
