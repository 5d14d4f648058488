"""Where one process's warm start spends its time: PyTorch alone on its warm local caches
beside ours from the store on a fresh node, each under cProfile (main thread).

One process, no torchrun: what a warm start costs per rank before any collective. Runs
PyTorch alone cold then warm (profiled) on node `local`, ours cold on node `cold` into a
file store, ours warm (profiled) on fresh nodes, with and without the snapshot; then the
warm rows again unprofiled, `--repeat` times, for their times. Writes OUT/profile.md
(times, the top functions by cumulative time of each profile, and the functions whose
time differs most) and OUT/<row>.prof.

    python scripts/bench/profile_warm.py --out-dir OUT [--train-args "..."]
"""

from __future__ import annotations

import argparse
import io
import json
import pstats
import shlex
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import harness

TIMEOUT_S = 900.0  # one process's job


def run(work: Path, name: str, node: str, train_args: list[str], *, ours: list[str] | None,
        profile: Path | None) -> dict:
    """One process of examples/train.py (harness.run: its log, launch time, deadline)."""
    out = work / "out" / name
    cmd = [sys.executable]
    if profile is not None:
        cmd += ["-m", "cProfile", "-o", str(profile)]
    cmd += ["-m", "coordinator", *ours] if ours is not None else []
    cmd += [str(harness.TRAIN), *train_args, "--out", str(out)]
    log = work / f"{name}.log"
    rc, wall = harness.run(cmd, harness.job_env(work / node), log, TIMEOUT_S)
    if rc != 0:
        raise RuntimeError(f"{name} failed ({rc}):\n{harness.log_tail(log)}")
    record = harness.read_ranks(out, 1)[0]
    return {"wall_s": round(wall, 2), "time_to_step1_s": round(record["time_to_step1_s"], 2),
            "time_to_main_s": round(record.get("time_to_main_s", 0.0), 2)}


def top(profile: Path, n: int) -> str:
    buf = io.StringIO()
    pstats.Stats(str(profile), stream=buf).sort_stats("cumulative").print_stats(n)
    return buf.getvalue()


def cumulative(profile: Path) -> dict[str, float]:
    stats = pstats.Stats(str(profile)).stats  # type: ignore[attr-defined]
    return {f"{Path(f).name}:{line}({fn})": ct for (f, line, fn), (_, _, _, ct, _)
            in stats.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", required=True)
    p.add_argument("--train-args", default="")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--top", type=int, default=60)
    a = p.parse_args(argv)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="profile-warm-"))
    args = shlex.split(a.train_args) + ["--parallel", "none"]
    store = str(work / "store")
    times: dict[str, list[dict]] = {}
    run(work, "plain-cold", "local", args, ours=None, profile=None)
    run(work, "ours-cold", "cold", args, ours=["--cache", store], profile=None)
    rows = {"plain-warm": (None, "local"), "ours-warm": (["--cache", store], "fresh"),
            "ours-warm-nosnap": (["--cache", store, "--no-snapshot"], "fresh-nosnap")}
    for i in range(a.repeat + 1):  # the first under cProfile
        for name, (ours, node) in rows.items():
            profile = out / f"{name}.prof" if i == 0 else None
            times.setdefault(name, []).append(run(
                work, f"{name}{i}", f"{node}{i}" if ours else node, args, ours=ours,
                profile=profile))
    lines = ["# One process's warm start, profiled", "",
             f"examples/train.py `{a.train_args}` (one process); "
             f"{json.dumps(harness.machine_info())}", "",
             "Times (s): the first of each row ran under cProfile.", ""]
    for name, ts in times.items():
        lines.append(f"- {name}: " + "; ".join(
            f"step1 {t['time_to_step1_s']} (main {t['time_to_main_s']})" for t in ts))
    plain, ours = cumulative(out / "plain-warm.prof"), cumulative(out / "ours-warm.prof")
    diff = sorted(((ours.get(k, 0.0) - plain.get(k, 0.0), k) for k in set(plain) | set(ours)),
                  reverse=True)
    lines += ["", "## Largest cumulative-time differences, ours-warm minus plain-warm", "",
              "```"] + [f"{d:+8.3f}  {k}" for d, k in diff[:a.top]] + ["```"]
    for name in rows:
        lines += ["", f"## {name}", "", "```", top(out / f"{name}.prof", a.top), "```"]
    (out / "profile.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(times), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
