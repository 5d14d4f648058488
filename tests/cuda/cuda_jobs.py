"""Real 2-GPU torchrun jobs for the CUDA tests and scripts/gpu_validate.py.

A "node" is a directory that stands for one machine: Inductor's and Triton's caches, the
coordinator's node-local object tier and TMPDIR. A fresh node is a new directory.

Every job runs its script through `job_wrapper.py`, which gives each rank its own Triton
cache dir and writes PyTorch's own counters at exit, and with `TRITON_CACHE_MANAGER`
pointing at `pt2cc_triton_probe.py`, which logs every Triton kernel compile (a Triton
cache miss) of the rank and of Inductor's compile workers. Together they say, per rank,
which Triton kernels were compiled and which came out of a loaded FX graph's bundle.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from tests.multiprocess.jobs import (  # one node layout for CPU and GPU jobs
    kill_group,
    node_env,
    read_ranks,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TRAIN = REPO / "examples" / "train.py"
WORKLOADS = HERE / "workloads.py"
WRAPPER = HERE / "job_wrapper.py"
NPROC = 2

# Set here (and by scripts/gpu-validate) in every job: NVLink multicast can take the
# host's GPUs out of service (the device README), and nothing of ours needs it.
SAFE_ENV = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}
# What would leak a cache, a store or a start time from the caller into a job.
_SCRUB = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "TRITON_CACHE_MANAGER", "PT2CC_CACHE",
          "PT2CC_NODE_CACHE_DIR", "PT2CC_T0", "PT2CC_STATS_FILE")


def two_gpus() -> bool:
    try:
        import torch

        return torch.cuda.is_available() and torch.cuda.device_count() >= 2
    except Exception:  # noqa: BLE001 - no torch, no CUDA: the tests skip
        return False


@dataclasses.dataclass
class Job:
    name: str
    returncode: int | None  # None: killed at its deadline
    log: Path
    wall_s: float
    outs: list[dict]  # the script's --out files, by rank
    stats: list[dict]  # the coordinator's --stats-file files, by rank ([] uncoordinated)
    counters: list[dict]  # PyTorch's own counters (scripts/bench/counters.py), by rank
    triton: dict[int, dict[str, list[str]]]  # rank -> {"compile"|"hit"|"build": [kernels]}

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and len(self.outs) == NPROC

    def check(self) -> Job:
        assert self.ok, f"job {self.name} failed (exit {self.returncode}):\n{self.tail()}"
        return self

    def tail(self, chars: int = 6000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stat(self, rank: int, name: str) -> int:
        return self.stats[rank][name]

    def total(self, name: str) -> int:
        return sum(s[name] for s in self.stats)

    def compiled_kernels(self, rank: int) -> list[str]:
        """Triton kernels this rank (or its compile workers) compiled: Triton cache misses."""
        return self.triton.get(rank, {}).get("compile", [])

    def losses(self, rank: int) -> list[float]:
        return self.outs[rank]["losses"]


class Running:
    """A started job; `result()` waits for it (jobs of one test may run side by side)."""

    def __init__(self, name: str, proc: subprocess.Popen, out: Path, log: Path,
                 timeout: float, started: float) -> None:
        self.name, self.proc, self.out, self.log = name, proc, out, log
        self.timeout, self.started = timeout, started

    def result(self) -> Job:
        try:
            rc: int | None = self.proc.wait(timeout=max(1.0, self.started + self.timeout
                                                         - time.monotonic()))
        except subprocess.TimeoutExpired:
            kill_group(self.proc)
            rc = None
        return Job(self.name, rc, self.log, time.monotonic() - self.started,
                   read_ranks(self.out, "out", NPROC), read_ranks(self.out, "stats", NPROC),
                   read_ranks(self.out, "counters", NPROC),
                   _read_probe(self.out / "probe"))


def start(name: str, work: Path, node: Path, script: Path, args: list[str], *,
          cache: str | None, launcher_args: list[str] = (), env: dict[str, str] | None = None,
          wrap: bool = True, probe: bool = True, compile_threads: str | None = "4",
          set_t0: bool = False, timeout: float = 300.0) -> Running:
    """Start `torchrun [-m coordinator --cache CACHE ...] [job_wrapper.py] SCRIPT ARGS --out ...`.

    cache=None runs the job without the coordinator (every rank compiles for itself).
    wrap/probe: the per-rank instrumentation described above (tests); off for timings.
    compile_threads: Inductor's compile workers per rank; several jobs run side by side in
    the tests, and one worker per core in every rank would start hundreds of processes
    (the setting is in no cache key). None keeps Inductor's default.
    set_t0: PT2CC_T0 is taken just before the launch, so that train.py's time_to_step1_s
    counts torchrun's own start-up too.
    """
    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", str(NPROC)]
    if cache is not None:
        cmd += ["-m", "coordinator", "--cache", cache, "--stats-file", str(out / "stats"),
                *launcher_args]
        if wrap and "--tag" not in launcher_args:
            cmd += ["--tag", script.stem]  # the snapshot's name follows the script, not us
    cmd += [str(WRAPPER)] if wrap else []
    cmd += [str(script), *args, "--out", str(out / "out")]
    full_env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    full_env.update(SAFE_ENV)
    full_env.update(node_env(node, seed=False))
    if compile_threads is not None:
        full_env["TORCHINDUCTOR_COMPILE_THREADS"] = compile_threads
    full_env.update({
        "OMP_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",  # a rewritten kernel module must never run stale .pyc
        "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)]
                                      + [p for p in [os.environ.get("PYTHONPATH")] if p]),
    })
    if wrap:
        full_env["PT2CC_BENCH_COUNTERS"] = str(out / "counters")
        full_env["PT2CC_TEST_RANK_TRITON_DIRS"] = "1"
    if probe:
        full_env["TRITON_CACHE_MANAGER"] = "pt2cc_triton_probe:CountingCacheManager"
        full_env["PT2CC_TEST_PROBE_DIR"] = str(out / "probe")
    full_env.update(env or {})
    with log.open("w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        if set_t0:
            full_env["PT2CC_T0"] = repr(time.time())
        proc = subprocess.Popen(cmd, env=full_env, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return Running(name, proc, out, log, timeout, time.monotonic())


def run(name: str, work: Path, node: Path, script: Path, args: list[str], **kw: object) -> Job:
    return start(name, work, node, script, args, **kw).result()  # type: ignore[arg-type]


def store_fx_keys(url: str) -> dict[str, int]:
    """{fxgraph key: number of stored variants} over every fingerprint of the store."""
    return store_keys(url, "fxgraph")


def store_keys(url: str, kind: str) -> dict[str, int]:
    from storage.maintenance import open_root, scan

    root = open_root(url)
    root.fs.invalidate_cache()  # s3fs keeps listings; the store changed since the last look
    counts: dict[str, int] = defaultdict(int)
    for e in scan(root.fs, root.root, root.retrier).entries:
        if e.kind == kind and e.section == "index":
            counts[e.key] += 1
    return dict(counts)


def _read_probe(probe_dir: Path) -> dict[int, dict[str, list[str]]]:
    """Per rank: the Triton kernels compiled, found in the cache, and launchers built."""
    events: dict[int, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    if not probe_dir.is_dir():
        return {}
    for path in sorted(probe_dir.glob("triton.*.log")):
        for line in path.read_text().splitlines():
            parts = line.split(" ", 2)
            if len(parts) == 3 and parts[1].lstrip("-").isdigit():
                events[int(parts[1])][parts[0]].append(parts[2])
    return {rank: dict(ev) for rank, ev in events.items()}


def time_to_step1(job: Job) -> float | None:
    """When the slowest rank finished its first step (train.py's time_to_step1_s)."""
    times = [o.get("time_to_step1_s") for o in job.outs]
    if len(times) != NPROC or any(t is None or t != t for t in times):
        return None
    return max(times)


def losses_close(a: list[float], b: list[float], rel: float = 1e-3, abs_: float = 1e-4) -> bool:
    if len(a) != len(b):
        return False
    return all(abs(x - y) <= max(abs_, rel * abs(y)) for x, y in zip(a, b, strict=True))


def fx_only_node(src: Path, dst: Path) -> Path:
    """A node holding a copy of `src`'s Inductor cache (FX graphs, kernel sources, autotune
    results) and nothing else: PyTorch's own warm start from its FX cache, with an empty
    Triton cache. What such a node still compiles is PyTorch's doing, not the store's."""
    shutil.copytree(src / "inductor", dst / "inductor", dirs_exist_ok=True)
    return dst


def kernel_names(kernels: list[str]) -> list[str]:
    """`<triton cache key>/<kernel>.json` -> `<kernel>` (sorted, for messages)."""
    return sorted(k.rsplit("/", 1)[-1].removesuffix(".json") for k in kernels)


def expect_no_kernel_beyond_pytorch(job: Job, baseline: Job) -> None:
    """The Triton kernels compiled on a fresh node are at most those PyTorch alone compiles
    warm from its own FX cache (`baseline`): a kernel it leaves out of its FX entries and
    compiles when the graph first runs (a loss reduction, user Triton kernels)."""
    for rank in range(2):
        ours, pytorch = set(job.compiled_kernels(rank)), set(baseline.compiled_kernels(rank))
        assert ours <= pytorch, (
            f"rank {rank}: Triton kernels compiled on a fresh node that PyTorch's own FX cache "
            f"does not recompile: {kernel_names(sorted(ours - pytorch))}")
