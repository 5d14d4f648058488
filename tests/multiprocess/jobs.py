"""Real torchrun jobs for the multi-process tests: one function starts one, one node dir each.

A "node" is a directory holding what a machine keeps between jobs (Inductor's and
Triton's caches, the node-local object tier, TMPDIR); a fresh node is a new directory.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import getpass
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from coordinator import compat

if TYPE_CHECKING:
    from storage.store import ArtifactStore

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "examples" / "train.py"
SCENARIOS = Path(__file__).with_name("scenarios.py")


@dataclasses.dataclass
class Job:
    returncode: int
    output: str
    stats: list[dict]  # the coordinator's per-rank counters, by rank
    outs: list[dict]  # the script's own per-rank results, by rank
    wall_s: float

    def check(self) -> Job:
        assert self.returncode == 0, f"job failed ({self.returncode}):\n{self.output[-6000:]}"
        return self

    def total(self, counter: str) -> int:
        return sum(s[counter] for s in self.stats)


def node_env(node: Path, *, seed: bool = True) -> dict[str, str]:
    """A node's directories (made if new). A new node is a machine that has run Inductor
    before but never these graphs: Inductor's per-machine C++ scaffolding (vector-ISA
    probes, precompiled header) is seeded into it (`seed=False`: a machine that never ran
    it, which builds both)."""
    inductor = node / "inductor"
    if seed and not inductor.exists():
        scaffolding = cpu_scaffolding()
        shutil.copytree(scaffolding / "inductor", inductor,
                        ignore=shutil.ignore_patterns("locks"))
        # Hard links where the file system allows: 150 MB that no job writes (Inductor
        # builds a header only where it has none; snapshots place only missing files).
        shutil.copytree(header_dir(scaffolding), header_dir(node), copy_function=_link_or_copy,
                        ignore=shutil.ignore_patterns("locks"))
    for sub in ("inductor", "triton", "objects", "tmp"):
        (node / sub).mkdir(parents=True, exist_ok=True)
    return {
        "TORCHINDUCTOR_CACHE_DIR": str(node / "inductor"),
        "TRITON_CACHE_DIR": str(node / "triton"),
        "PT2CC_NODE_CACHE_DIR": str(node / "objects"),
        "TMPDIR": str(node / "tmp"),
    }


@functools.cache
def cpu_scaffolding() -> Path:
    """A node dir holding Inductor's vector-ISA probes and precompiled header, built once
    per test process: g++ builds of Inductor's headers, some 20 s on 2 cores, that every
    fresh cache dir would pay again although they test nothing of ours (the snapshot
    carries them to really fresh nodes). Built as the jobs build them (`cpu_job_env`); the
    header comes from a compile whose own cache entries go to a scratch dir, not the seed."""
    seed = Path(tempfile.mkdtemp(prefix="pt2cc-seed-node-"))
    atexit.register(shutil.rmtree, seed, ignore_errors=True)
    env = {**os.environ, **_cpu_settings(), "TORCHINDUCTOR_CACHE_DIR": str(seed / "inductor"),
           "TMPDIR": str(seed / "tmp"), "SCRATCH": str(seed / "scratch")}
    (seed / "tmp").mkdir()
    build = ("import os, torch; from torch._inductor import cpu_vec_isa as v; v.pick_vec_isa(); "
             "os.environ['TORCHINDUCTOR_CACHE_DIR'] = os.environ['SCRATCH']; "
             "torch.compile(lambda x: x.sin() + 1)(torch.ones(8))")
    subprocess.run([sys.executable, "-c", build], check=True, timeout=600, env=env)
    assert list(header_dir(seed).glob("*.gch")), "no precompiled header was built"
    return seed


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system (a --basetemp elsewhere)
        shutil.copy2(src, dst)


def _cpu_settings() -> dict[str, str]:
    """What every CPU job of the tests sets besides its node's directories (`cpu_job_env`)."""
    env = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    if compat.isa_probes_import_torch():
        env["TORCHINDUCTOR_VEC_ISA_OK"] = "1"
    return env


def cpu_job_env(node: Path, *, seed: bool = True) -> dict[str, str]:
    """The environment of a CPU job (gloo) on a simulated node: no GPU even where one is
    visible, this checkout first on the path (wheels a GPU machine adds stay on it), and
    Inductor compiling in the rank's own process (by default each rank would start a
    worker per core: 32 on a 64-core GPU host, for a few small kernels). Where Inductor's
    ISA probes import torch in a child (torch < 2.13: a GPU host's CUDA build, per ISA,
    per process, per job), the ISA is taken as the CPU reports it, unprobed, in every job
    alike (the setting is part of the FX key): the probes' own handling is then covered
    on torch 2.13 only."""
    return {**node_env(node, seed=seed), **_cpu_settings(),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                        os.environ.get("PYTHONPATH")]))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(script: Path, args: list[str], *, node: Path, store: str | None, out: Path,
          nproc: int = 2, launcher_args: list[str] = (), torchrun_args: list[str] = (),
          env: dict[str, str] | None = None, seed: bool = True) -> subprocess.Popen:
    """Start `torchrun [-m coordinator --cache STORE] SCRIPT ARGS`; store=None: uncoordinated.
    `seed`: see `node_env`."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
           "--nproc-per-node", str(nproc), "--rdzv-backend", "c10d",
           "--rdzv-endpoint", f"127.0.0.1:{free_port()}", *torchrun_args]
    if store is not None:
        cmd += ["-m", "coordinator", "--cache", store, "--stats-file", str(out / "stats"),
                *launcher_args]
    cmd += [str(script), *args, "--out", str(out / "out")]
    full_env = {**os.environ, **cpu_job_env(node, seed=seed), **(env or {})}
    # A session of its own: a job past its deadline is killed whole (`finish`).
    return subprocess.Popen(cmd, env=full_env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def kill_group(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """End a job started in a session of its own, every process of it and nothing else:
    SIGTERM, then SIGKILL for whatever outlived `grace_s` (a worker left behind holds the
    job's output open, and a gloo teardown hang ignores the agent's end)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def finish(proc: subprocess.Popen, out: Path, *, nproc: int = 2, timeout: float = 400,
           started: float | None = None) -> Job:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        output, _ = proc.communicate(timeout=60)
        raise AssertionError(f"job still running after {timeout} s:\n{output[-6000:]}") from None
    return Job(proc.returncode, output, read_ranks(out, "stats", nproc),
               read_ranks(out, "out", nproc), time.monotonic() - (started or time.monotonic()))


def run(script: Path, args: list[str], *, node: Path, store: str | None, out: Path,
        nproc: int = 2, timeout: float = 400, **kwargs: object) -> Job:
    t0 = time.monotonic()
    proc = start(script, args, node=node, store=store, out=out, nproc=nproc, **kwargs)
    return finish(proc, out, nproc=nproc, timeout=timeout, started=t0)


def run_without_torchrun(script: Path, args: list[str], *, node: Path, store: str, out: Path,
                         nproc: int = 2, timeout: float = 400, launcher: bool = True) -> Job:
    """Ranks started as srun or mpirun start them: one process per rank with RANK,
    WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set, and no torchrun agent; each
    runs `python -m coordinator ... SCRIPT`, or (launcher=False) `python SCRIPT` with the
    store in PT2CC_CACHE, for a script that installs the coordinator itself."""
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHELASTIC")}
    env.update(cpu_job_env(node), WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()))
    if launcher:
        cmd = [sys.executable, "-m", "coordinator", "--cache", store, "--stats-file",
               str(out / "stats"), str(script), *args, "--out", str(out / "out")]
    else:
        env.update(PT2CC_CACHE=store, PT2CC_STATS_FILE=str(out / "stats"))
        cmd = [sys.executable, str(script), *args, "--out", str(out / "out")]
    t0 = time.monotonic()
    procs = [subprocess.Popen(cmd, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(nproc)]
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise AssertionError(f"rank still running after {timeout} s") from None
    code = next((p.returncode for p in procs if p.returncode), 0)
    return Job(code, "\n".join(outputs), read_ranks(out, "stats", nproc),
               read_ranks(out, "out", nproc), time.monotonic() - t0)


def read_ranks(out: Path, stem: str, nproc: int) -> list[dict]:
    """The per-rank JSON files `<out>/<stem>.rank<R>.json` that exist, by rank."""
    found = []
    for rank in range(nproc):
        path = out / f"{stem}.rank{rank}.json"
        if path.exists():
            found.append(json.loads(path.read_text()))
    return found


def store_variants(store_dir: Path, kind: str) -> dict[str, int]:
    """{key dir: number of variants} of one kind in a local store (all fingerprints)."""
    counts: dict[str, int] = {}
    for key_dir in store_dir.glob(f"v1/*/index/{kind}/*"):
        counts[key_dir.name] = len(index_entries(key_dir))
    return counts


def snapshot_tags(store_dir: Path) -> list[tuple[ArtifactStore, str]]:
    """(store, tag) for every snapshot tag in a local store, of every fingerprint."""
    from storage import open_store
    from storage.layout import decode_segment

    return [(open_store(str(store_dir), fingerprint=tag_dir.parent.parent.name),
             decode_segment(tag_dir.name)) for tag_dir in store_dir.glob("v1/*/snapshots/*")]


def snapshot_file_names(store_dir: Path) -> list[str]:
    """The files every snapshot in a local store carries (all fingerprints and tags)."""
    from coordinator import bundle
    from coordinator.snapshot import open_decompressed

    names = []
    for store, tag in snapshot_tags(store_dir):
        with open_decompressed(store.get_snapshot(tag)) as stream:
            names += bundle.Reader(stream).names
    return names


def header_dir(node: Path) -> Path:
    """Where a job on `node` keeps Inductor's precompiled headers: under the default cache
    dir, in the job's TMPDIR."""
    return node / "tmp" / f"torchinductor_{getpass.getuser()}" / "precompiled_headers"


def index_entries(key_dir: Path) -> list[Path]:
    """A key's index entries: named by digest (its components.json sits beside them)."""
    return [p for p in key_dir.iterdir() if p.name != "components.json"]


def compiler_log_env(tmp: Path) -> tuple[dict[str, str], Path]:
    """A `g++` first on PATH that logs each build, then runs the real one.

    Inductor names its compiler `g++` in the command line its kernel hashes cover, and the
    real one runs as `g++` too (`g++ -v`, which names how it was called, goes into the keys
    of the vector-ISA probes and the precompiled header), so the wrapper changes no key; it
    only shows which C++ files were built.
    """
    bindir, log = tmp / "cxx-bin", tmp / "cxx.log"
    bindir.mkdir(parents=True, exist_ok=True)
    real = subprocess.run(["which", "g++"], capture_output=True, text=True).stdout.strip()
    wrapper = bindir / "g++"
    wrapper.write_text(
        f'#!/bin/bash\n[ "$1" = "--version" ] || echo "$@" >> "{log}"\n'
        f'PATH="{os.environ["PATH"]}" exec -a g++ "{real}" "$@"\n'  # finds its own parts
    )
    wrapper.chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}, log


def kernels_built(log: Path) -> list[str]:
    """C++ kernel sources (Inductor's `c*.cpp` under its cache dir) that were compiled.

    The vector-ISA probes Inductor compiles on each new machine are named alike but carry
    no kernel; they are told apart by their source: Inductor's kernels define `void  kernel(`,
    the probes `__avx_chk_kernel(` and the like.
    """
    if not log.exists():
        return []
    built = []
    for line in log.read_text().splitlines():
        for arg in line.split():
            is_source = arg.endswith(".cpp") and "/inductor/" in arg and os.path.exists(arg)
            if is_source and re.search(r"\bvoid\s+kernel\(", Path(arg).read_text()):
                built.append(arg)
    return built


def headers_built(log: Path) -> list[str]:
    """Precompiled headers (`*.h.gch`) that were built."""
    if not log.exists():
        return []
    return [arg for line in log.read_text().splitlines() for arg in line.split()
            if arg.endswith(".gch")]
