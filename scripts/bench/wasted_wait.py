"""Waiting wasted on variants that cannot fit: this checkout beside an earlier revision.

Each rank of tests/multiprocess/variants.py needs its own guarded variants of one FX graph
(sizes the other rank never runs), so a rank that waits for the other's compile gets a
variant whose guards fail for it and compiles all the same: every second it waited is
wasted. Both trees run the same two 2-rank jobs on the same script: `cold` (empty store)
and `new-sizes` (the same node and store, sizes no job has compiled). Reports, per tree
and job, the waits, the seconds waited, the loads after a wait and the compiles.

    .venv/bin/python scripts/bench/wasted_wait.py --before REV [--out-dir docs/results]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import harness

VARIANTS = harness.REPO / "tests" / "multiprocess" / "variants.py"
JOBS = {"cold": [], "new-sizes": ["--grow", "3"]}
COLUMNS = ("waits", "waited_s", "loaded_after_wait", "fxgraph_cache_miss")
TIMEOUT_S = 600.0


def run_tree(tree: Path, work: Path) -> dict[str, dict[str, float]]:
    """The two jobs, with the coordinator of `tree`, on one node and one store."""
    node, store = work / "node", work / "store"
    found = {}
    for job, args in JOBS.items():
        out = work / job
        cmd = [*harness.torchrun(2), *harness.coordinator(str(store), out / "stats"),
               str(VARIANTS), *args, "--out", str(out / "out")]
        rc, _ = harness.run(cmd, harness.job_env(node, {"OMP_NUM_THREADS": "1"}),
                            work / f"{job}.log", TIMEOUT_S, cwd=tree)
        if rc != 0:
            tail = harness.log_tail(work / f"{job}.log")
            raise RuntimeError(f"{tree} {job} failed ({rc}):\n{tail}")
        ranks = harness.read_ranks(out / "stats", 2).values()
        found[job] = {c: round(sum(r[c] for r in ranks), 2) for c in COLUMNS}
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", required=True, help="the earlier revision (git rev)")
    p.add_argument("--out-dir", default=str(harness.RESULTS))
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="wasted-wait-"))
    before = work / "before-tree"
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(before), a.before],
                   cwd=harness.REPO, check=True)
    try:
        results = {"before": run_tree(before, work / "before"),
                   "after": run_tree(harness.REPO, work / "after")}
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(before)],
                       cwd=harness.REPO, check=False)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=harness.REPO,
                          capture_output=True, text=True).stdout.strip()
    machine = harness.machine_name(harness.machine_info())
    lines = ["# Waiting wasted on variants that cannot fit", "",
             f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}; {machine}; "
             f"tests/multiprocess/variants.py, 2 ranks, each needing its own variants; "
             f"before = {a.before}, after = {head}. Sums over both ranks; a wait not "
             "followed by a load was wasted.", ""]
    lines += harness.md_table(
        ["tree", "job", *COLUMNS],
        ([tree, job, *(v[c] for c in COLUMNS)] for tree, jobs in results.items()
         for job, v in jobs.items()), align="ll" + "r" * len(COLUMNS))
    out = Path(a.out_dir)
    name = f"wasted-wait-{machine}"
    (out / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    harness.clean_up(work, keep=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
