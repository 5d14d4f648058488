"""One job harness for the benchmark and GPU scripts: launch, wait, read, describe, render.

Every script here runs real ``torchrun`` jobs of examples/train.py on "nodes": a node is a
directory that stands for one machine (Inductor's and Triton's caches, the coordinator's
node-local object tier, TMPDIR), and a fresh node is a new directory. What differs between
the scripts is which rows they run and what they report; how a job is started, ended and
read is here, once. Nothing here imports from tests/: the scripts must run on machines
(and in states of the tree) where the tests do not.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "results"
TRAIN = REPO / "examples" / "train.py"
BENCH = REPO / "scripts" / "bench"
# Job-side wrapper: PyTorch's own counters at exit, Dynamo switches (scripts/bench/counters.py).
COUNTERS_WRAPPER = BENCH / "counters.py"

# What a caller's environment must not leak into a job: a cache dir, a store, a start
# time, credentials or a remote cache setting would make a "fresh node" warm.
SCRUB_PREFIXES = ("TORCHINDUCTOR_", "TRITON_", "PT2CC_", "AWS_")
# Set in every job: NVLink multicast can take a host's GPUs out of service, and nothing
# of ours needs it (no effect on CPU jobs).
SAFE_ENV = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}


# -- launching ------------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port free now (a rendezvous or a server binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_env(node: Path) -> dict[str, str]:
    """The environment of a node: its own caches, object tier and /tmp (dirs created)."""
    dirs = {"TORCHINDUCTOR_CACHE_DIR": "inductor", "TRITON_CACHE_DIR": "triton",
            "PT2CC_NODE_CACHE_DIR": "objects", "TMPDIR": "tmp"}
    for sub in dirs.values():
        (node / sub).mkdir(parents=True, exist_ok=True)
    return {var: str(node / sub) for var, sub in dirs.items()}


def bytecode_cache() -> str | None:
    """A directory for Python's bytecode where the installed torch has none beside its
    sources (an environment installed without compiling them, on a read-only disk): there
    every process compiles torch, sympy and whatever else it imports from source, 5-6 s
    of CPU per process on the GPU machines, and more for a row that imports more (ours:
    s3fs and botocore). An installation with its bytecode, as pip leaves it, does not, so
    jobs share this one (PYTHONPYCACHEPREFIX) and rows compare what they do, not how much
    Python source they compile. None where torch's bytecode is in place."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return None
    if os.path.exists(importlib.util.cache_from_source(spec.origin)):
        return None
    return os.path.join(tempfile.gettempdir(), f"pt2cc-bench-pycache-{os.getuid()}")


# What every row imports before its first compile, put into the shared bytecode cache
# before the first timed job (the rest is written by whichever job imports it first).
WARM_IMPORTS = ("torch._dynamo", "torch._inductor.compile_fx", "torch._inductor.async_compile",
                "coordinator.api", "s3fs", "zstandard")


def warm_bytecode_cache() -> str | None:
    """Fill the shared bytecode cache, if the installation needs one, untimed."""
    pycache = bytecode_cache()
    if pycache is not None:
        code = "import contextlib, importlib\n" + "".join(
            f"with contextlib.suppress(ImportError): importlib.import_module({m!r})\n"
            for m in WARM_IMPORTS)
        subprocess.run([sys.executable, "-c", code], env=job_env(Path(pycache) / "node"),
                       check=False, timeout=600)
    return pycache


def job_env(node: Path, extra: Mapping[str, str] | None = None,
            pythonpath: Iterable[Path] = ()) -> dict[str, str]:
    """The caller's environment without cache/store leftovers, on `node`, with the repo
    (and `pythonpath`) importable ahead of whatever PYTHONPATH the caller had, and the
    shared bytecode cache where the installation lacks one (`bytecode_cache`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUB_PREFIXES)}
    env.update(SAFE_ENV)
    if (pycache := bytecode_cache()) is not None:
        env["PYTHONPYCACHEPREFIX"] = pycache
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(node_env(node))
    paths = [str(REPO), *map(str, pythonpath), os.environ.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.update(extra or {})
    return env


def torchrun(nproc: int, rdzv: Mapping[str, Any] | None = None) -> list[str]:
    """`python -m torch.distributed.run` for one node: standalone, or node `rdzv["rank"]`
    of `rdzv["nnodes"]` meeting at a c10d rendezvous on loopback port `rdzv["port"]`."""
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if rdzv is None:
        cmd += ["--standalone"]
    else:
        cmd += ["--nnodes", str(rdzv["nnodes"]), "--node-rank", str(rdzv["rank"]),
                "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{rdzv['port']}",
                "--rdzv-id", rdzv["id"],
                # node 0 hosts the rendezvous store; the others only connect to it
                "--rdzv-conf", f"is_host={1 if rdzv['rank'] == 0 else 0}",
                "--local-addr", "127.0.0.1"]
    return cmd + ["--nproc-per-node", str(nproc)]


def coordinator(cache: str, stats: Path, tag: str | None = None) -> list[str]:
    """`-m coordinator ...`: what turns a plain torchrun job into a coordinated one."""
    return ["-m", "coordinator", "--cache", cache, "--stats-file", str(stats),
            *(["--tag", tag] if tag else [])]


def start(cmd: list[str], env: dict[str, str], log: Path,
          t0: float | None = None) -> subprocess.Popen:
    """Start a job in its own session (so that it, and only it, can be killed), its output
    in `log` after the command line. PT2CC_T0 is the launch time (taken here, last, unless
    jobs started together share `t0`): time to step 1 counts torchrun's own start-up."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        f.write(shlex.join(cmd) + "\n")
        f.flush()
        env = {**env, "PT2CC_T0": repr(time.time() if t0 is None else t0)}
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)


def run(cmd: list[str], env: dict[str, str], log: Path, timeout: float,
        grace_s: float = 20.0) -> tuple[int | None, float]:
    """Start a job and wait for it: (exit status or None when killed at `timeout`, wall s)."""
    t0 = time.perf_counter()
    rc = wait_or_kill(start(cmd, env, log), timeout, grace_s)
    return rc, time.perf_counter() - t0


# -- waiting and ending ---------------------------------------------------------------------


def kill_group(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """End a job started by `start` and its workers (its session), nothing else: SIGTERM,
    then SIGKILL after `grace_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


def wait_or_kill(proc: subprocess.Popen, timeout: float, grace_s: float = 20.0) -> int | None:
    """The job's exit status, or None when it ran past `timeout` and was ended (its
    Python stacks printed first)."""
    try:
        return proc.wait(timeout=max(timeout, 0.0))
    except subprocess.TimeoutExpired:
        print_stacks(proc.pid)
        kill_group(proc, grace_s)
        return None


def print_stacks(session: int) -> None:
    """Every Python thread of a stuck job's processes, with py-spy where it is installed:
    a hang seen once in a long benchmark is read from its output, not rerun until it
    shows again."""
    spy = shutil.which("py-spy")
    if spy is None:
        print(f"(no py-spy: the stacks of job {session} are not shown)", flush=True)
        return
    for pid in _processes_of(session):
        print(f"== stacks of pid {pid} before the kill", flush=True)
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            subprocess.run([spy, "dump", "--pid", str(pid)], timeout=30, check=False)


def _processes_of(session: int) -> list[int]:
    """The Python processes of a session (Linux: /proc/<pid>/stat's sixth field)."""
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path("/proc", entry, "stat").read_text()
            exe = os.readlink(f"/proc/{entry}/exe")
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[3]) == session and "python" in exe:
            pids.append(int(entry))
    return sorted(pids)


def parse_rows(p: argparse.ArgumentParser, argv: list[str] | None,
               rows: tuple[str, ...]) -> argparse.Namespace:
    """Parse, refusing a --rows entry that names no row (a typo would run nothing)."""
    args = p.parse_args(argv)
    unknown = set(args.rows.split(",")) - set(rows)
    if unknown:
        p.error(f"unknown rows {sorted(unknown)}; choose from {rows}")
    return args


def clean_up(work: Path, keep: bool, note: str = "") -> None:
    """Remove a run's work dir (caches are large), unless kept: asked for, or a row failed
    and its logs there explain why."""
    if keep:
        print(f"kept {work}{note}", flush=True)
    else:
        shutil.rmtree(work, ignore_errors=True)


# -- reading what a job wrote ---------------------------------------------------------------


def read_ranks(prefix: Path, nproc: int) -> dict[int, dict]:
    """The files `<prefix>.rank<R>.json` (R < nproc) that exist and parse, by rank: a rank
    that failed or was killed leaves none, or half of one, and that is not an error here."""
    found: dict[int, dict] = {}
    for rank in range(nproc):
        try:
            found[rank] = json.loads(Path(f"{prefix}.rank{rank}.json").read_text())
        except (OSError, ValueError):
            continue
    return found


def by_rank(records: Mapping[int, dict], nproc: int, key: str) -> list[Any]:
    """records[r][key] for every rank, None where a rank wrote nothing."""
    return [records[r].get(key) if r in records else None for r in range(nproc)]


def time_to_step1(outs: Mapping[int, dict], nproc: int) -> float | None:
    """A job reaches step 1 when its slowest rank does; None unless every rank said when."""
    times = by_rank(outs, nproc, "time_to_step1_s")
    if any(t is None or not math.isfinite(t) for t in times) or not times:
        return None
    return max(times)


def sum_numbers(records: Iterable[dict]) -> dict[str, float]:
    """Numeric leaves of nested dicts, summed over records, as dotted keys (rank ids out)."""
    totals: dict[str, float] = {}
    for rec in records:
        for key, value in _numbers(rec):
            totals[key] = totals.get(key, 0.0) + value
    return totals


def _numbers(data: Any, prefix: str = "") -> list[tuple[str, float]]:
    if isinstance(data, dict):
        return [kv for k, v in data.items() if k not in ("rank", "world_size", "local_rank")
                for kv in _numbers(v, f"{prefix}{k}.")]
    if isinstance(data, (int, float)) and not isinstance(data, bool):
        return [(prefix.rstrip("."), float(data))]
    return []


def log_tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def worker_error(log: Path, lines: int = 10) -> str:
    """The workers' last output before torchrun's own failure report, which says nothing."""
    try:
        text = log.read_text(errors="replace").splitlines()[1:]  # [0] is the command
    except OSError:
        return ""
    for i, line in enumerate(text):
        agent_traceback = line.startswith("Traceback") and any(
            "distributed/run.py" in later or "distributed/elastic/" in later
            for later in text[i + 1 : i + 6])
        agent_line = any(m in line for m in ("failed (exitcode:", "ChildFailedError",
                                             "death signal"))
        if agent_traceback or agent_line:
            text = text[:i]
            break
    deduped: list[str] = []  # every rank tends to print the same error
    for line in text:
        if line not in deduped[-4:]:
            deduped.append(line)
    return "\n".join("  " + line for line in deduped[-lines:])


# -- the machine ----------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """Host, Python and torch, and the CUDA device if any: the metadata of a CPU report."""
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "bytecode_cache": bytecode_cache(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        info["cuda_device_count"] = torch.cuda.device_count()
    except Exception as exc:  # noqa: BLE001 - the table matters more than this metadata
        info["torch_error"] = repr(exc)
    return info


def machine_name(info: dict[str, Any]) -> str:
    """`cpuN` or `<count>x<GPU>`: the machine's part of a result file's name."""
    if info.get("cuda_device"):
        gpu = info["cuda_device"].replace("NVIDIA ", "").split()[0]
        return f"{info.get('cuda_device_count')}x{gpu}"
    return f"cpu{info.get('cpu_count')}"


def gpu_machine_info() -> dict[str, Any]:
    """Card, driver and library versions: what a GPU result depends on."""
    import importlib.metadata as md

    import torch

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    gpus = _output(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                    "--format=csv,noheader"]).splitlines()
    return {
        "gpus": [g.strip() for g in gpus],
        "gpu_name": gpus[0].split(",")[0].strip() if gpus else None,
        "driver": gpus[0].split(",")[1].strip() if gpus and "," in gpus[0] else None,
        "gpu_count": torch.cuda.device_count(),
        "torch": torch.__version__,
        "torch_git": getattr(torch.version, "git_version", None),
        "cuda_runtime": torch.version.cuda,
        "triton": version("triton"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "s3fs": version("s3fs"),
        "moto": version("moto"),
    }


def _output(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable ({exc})"


# -- markdown -------------------------------------------------------------------------------


def md_row(cells: Iterable[Any]) -> str:
    """`| a | b |`; an empty cell is `| |`."""
    return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"


def md_table(header: list[str], rows: Iterable[Iterable[Any]], align: str = "",
             spaced: bool = False) -> list[str]:
    """A markdown table's lines. `align`: a letter per column, `l` or `r` (default: all
    left); `spaced`: `| --- |` separators rather than `|---|`."""
    if spaced:
        sep = md_row(["---"] * len(header))
    else:
        align = align or "l" * len(header)
        sep = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return [md_row(header), sep, *(md_row(r) for r in rows)]


def fmt(x: Any, spec: str = "{:.2f}", none: str = "—") -> str:
    """A number for a table cell, `none` where there is none."""
    return none if x is None else spec.format(x)


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` whole: a reader (or a run cut short) never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
