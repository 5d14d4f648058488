"""`python -m coordinator [options] SCRIPT [ARGS]`: run a script under the coordinator.

The script runs exactly as `python SCRIPT ARGS` would (`__main__`, `sys.argv`, `sys.path`,
exit status, exceptions), with the coordinator installed before its first line.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import runpy
import sys

from coordinator.config import Config
from coordinator.errors import ConfigError
from coordinator.snapshot import derive_tag
from storage.units import argument_type, parse_size

USAGE = "python -m coordinator [options] (SCRIPT | -m MODULE) [ARGS...]"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m coordinator", usage=USAGE,
        description="Run a torch.compile script so that one rank compiles each graph, the "
        "others load it, and later jobs load it from a shared store. Launch it with torchrun: "
        "torchrun --nproc-per-node 8 -m coordinator --cache s3://bucket/prefix train.py ARGS",
    )
    p.add_argument("--cache", metavar="URL", help="the store: any fsspec URL or a local path "
                   "(default: $PT2CC_CACHE, else ~/.cache/pt2cc/store)")
    p.add_argument("--node-cache-dir", metavar="DIR", help="node-local copy of fetched objects, "
                   "shared by the ranks of a machine (default: $TMPDIR/pt2cc-node-UID)")
    p.add_argument("--node-cache-max-bytes", metavar="SIZE", type=argument_type(parse_size),
                   help="bound of the node-local copy, e.g. 20G (default 10G)")
    p.add_argument("--wait-timeout", metavar="S", type=float, dest="wait_timeout_s",
                   help="longest a rank waits for another rank's compile (default 900)")
    p.add_argument("--stale-after", metavar="S", type=float, dest="stale_after_s",
                   help="a compiling rank silent this long is taken for dead (default 30)")
    p.add_argument("--tag", help="name of this job's snapshot (default: <project>:<script>, "
                   "see the README)")
    p.add_argument("--no-snapshot", dest="snapshot", action="store_const", const=False,
                   help="neither prefetch nor publish a snapshot; per-key lookups only")
    p.add_argument("--stats-file", metavar="PATH",
                   help="write each rank's counters to PATH.rank<R>.json at exit, and the "
                   "job's (every rank's, with totals) to PATH.job.json on rank 0")
    p.add_argument("--trace", metavar="DIR", help="write a timeline of claims, waits, loads, "
                   "compiles and publishes: DIR/rank<R>.trace.json per rank and "
                   "DIR/job.trace.json for the job (Chrome trace JSON: open it in Perfetto)")
    p.add_argument("--no-device-normalization", dest="normalize_devices", action="store_const",
                   const=False, help="keep every GPU visible to every worker (keys become "
                   "per device index: ranks on different GPUs then share nothing)")
    p.add_argument("--no-ddp-graph-split", dest="ddp_graph_split", action="store_const",
                   const=False, help="compile DDP models as one graph (torch._dynamo.config."
                   "optimize_ddp=False): warm starts load AOTAutograd's cache instead of "
                   "tracing again, but DDP no longer overlaps communication with backward")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("-m", dest="module", metavar="MODULE", help="run a module, like python -m")
    p.add_argument("script", nargs="?", help="the training script")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the script's arguments")
    return p


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """Our options, and the target with its arguments: the first positional or `-m X` ends ours.

    argparse alone would take the script's own `--flags` after `-m MODULE` for ours.
    """
    takes_value = {a for act in build_parser()._actions if act.nargs is None
                   for a in act.option_strings}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "-m":
            return argv[: i + 2], argv[i + 2 :]
        if not arg.startswith("-") or arg == "--":
            return argv[:i], argv[i + (arg == "--") :]
        i += 2 if arg in takes_value else 1
    return argv, []


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, target = split_argv(argv)
    parser = build_parser()
    opts = parser.parse_args(ours)
    if opts.module is None:
        if not target:
            parser.error("name a script to run (or -m MODULE)")
        script, script_args = target[0], target[1:]
        if not os.path.isfile(script):
            parser.error(f"script not found: {script}")
    else:
        script, script_args = None, target
        if importlib.util.find_spec(opts.module.partition(".")[0]) is None:
            parser.error(f"module not found: {opts.module}")

    settings = {k: v for k, v in vars(opts).items() if k not in ("module", "script", "args")}
    try:
        config = Config.from_env(cache_url=settings.pop("cache"), **settings)
    except ConfigError as exc:
        parser.error(str(exc))
    if config.tag is None:
        config = dataclasses.replace(config, tag=derive_tag(opts.module or script))

    if config.normalize_devices:
        from coordinator import devices

        os.environ.update(devices.normalize(dict(os.environ)))

    import coordinator.api
    from storage import StoreConfigError

    try:
        coordinator.api.install(config=config)
    except (ConfigError, StoreConfigError) as exc:
        parser.error(str(exc))

    if script is not None:
        sys.argv = [script, *script_args]
        sys.path[0] = os.path.dirname(os.path.abspath(script))
        runpy.run_path(script, run_name="__main__")
    else:
        sys.argv = [opts.module, *script_args]
        sys.path[0] = os.getcwd()
        runpy.run_module(opts.module, run_name="__main__", alter_sys=True)
