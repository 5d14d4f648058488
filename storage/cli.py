"""`pt2cc`: look after an artifact store (ls, stats, verify, prune) and read what jobs
reported (report, explain). Never imports torch."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from storage import explain, summary
from storage.errors import StoreError
from storage.location import read_json
from storage.maintenance import (
    Scan,
    StoreRoot,
    apply_prune,
    group_entries,
    open_root,
    plan_prune,
    scan,
    summarize,
)
from storage.maintenance import verify as verify_store
from storage.signing import load_signing_key
from storage.units import argument_type, human_age, human_size, parse_duration, parse_size


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in [header, *rows])


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else text)


def _environments(s: Scan) -> str:
    """One line per fingerprint: what it stands for (torch, Triton, CUDA, GPU)."""
    envs = s.environments
    return "\n".join(f"{fp}: {explain.environment_text(envs[fp]) if fp in envs else '?'}"
                     for fp in s.fingerprints)


def cmd_ls(args: argparse.Namespace) -> int:
    root = open_root(args.url)
    s = scan(root.fs, root.root, root.retrier)
    groups = group_entries(s.entries, s.last_used)
    now = time.time()
    rows = [[g["fingerprint"], g["kind"], g["key"], str(g["variants"]), human_size(g["bytes"]),
             human_age(now - g["newest"]),
             human_age(now - g["last_used"]) if g["last_used"] else "-"] for g in groups]
    text = (_table(rows, ["FINGERPRINT", "KIND", "KEY", "VARIANTS", "SIZE", "PUBLISHED",
                          "LAST USED"]) + "\n\n" + _environments(s)) if rows \
        else f"{args.url}: no entries"
    for g in groups:  # each key with what its fingerprint stands for, for tools
        g["environment"] = s.environments.get(g["fingerprint"])
    _emit(args, groups, text)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    root = open_root(args.url)
    s = scan(root.fs, root.root, root.retrier)
    per_fp = summarize(s)
    total = {k: sum(v[k] for v in per_fp.values()) for k in
             ("entries", "keys", "objects", "bytes", "quarantined", "dangling")}
    rows = [[fp, str(v["keys"]), str(v["entries"]), str(v["objects"]), human_size(v["bytes"]),
             str(v["quarantined"])] for fp, v in per_fp.items()]
    rows.append(["TOTAL", str(total["keys"]), str(total["entries"]), str(total["objects"]),
                 human_size(total["bytes"]), str(total["quarantined"])])
    text = _table(rows, ["FINGERPRINT", "KEYS", "ENTRIES", "OBJECTS", "BYTES", "QUARANTINED"])
    text += "\n\n" + _environments(s)
    _emit(args, {"url": args.url, "fingerprints": per_fp, "total": total,
                 "environments": s.environments}, text)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    root = open_root(args.url)
    key = load_signing_key()
    report = verify_store(root.fs, root.root, root.retrier, key, quarantine=args.quarantine)
    lines = [f"checked {report.checked} objects"
             f"{' (signatures checked)' if key else ' (no signing key: digests only)'}"]
    lines += [f"BAD      {fp}/{digest}: {reason}" for fp, digest, reason in report.bad]
    lines += [f"DANGLING {e.fingerprint} {e.kind} {e.key} -> {e.digest} (object missing)"
              for e in report.dangling]
    if report.ok:
        lines.append("OK")
    elif report.repaired:
        lines.append("bad objects quarantined and their entries removed")
    else:
        lines.append("run with --quarantine to move bad objects aside")
    _emit(args, report.as_dict(), "\n".join(lines))
    return 0 if report.ok else 1


def cmd_prune(args: argparse.Namespace) -> int:
    if args.older_than is None and args.max_bytes is None:
        print("pt2cc prune: give --older-than and/or --max-bytes", file=sys.stderr)
        return 2
    root = open_root(args.url)
    s = scan(root.fs, root.root, root.retrier)
    plan = plan_prune(s, args.older_than, args.max_bytes)
    if args.yes:
        apply_prune(root.fs, root.root, root.retrier, plan, s)
    verb = "removed" if plan.applied else "would remove"
    text = (f"{verb} {len(plan.entries)} entries, {len(plan.objects)} objects, "
            f"{len(plan.quarantine)} quarantined files, {len(plan.notes)} notes (old records "
            f"of use, orphaned components): {human_size(plan.bytes_freed)} of "
            f"{human_size(plan.bytes_before)}")
    if not plan.applied:
        text = "dry run: " + text + " (run with --yes to apply)"
    _emit(args, plan.as_dict(), text)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    jobs = summary.load_jobs(args.files)
    rows, data = [], {}
    for name, ranks in jobs.items():
        t = summary.totals(ranks, _world_size(ranks))
        data[name] = t
        rows.append(_report_row(name, t))
    total = summary.totals([r for ranks in jobs.values() for r in ranks])
    total["ranks"] = sum(t["ranks"] for t in data.values())
    rows.append(_report_row("TOTAL", total))
    text = _table(rows, ["JOB", "RANKS", "FX HIT/MISS", "AOT HIT/MISS", "HIT RATE", "LOADED",
                         "WAITED", "FETCHED", "TOP MISS REASON"])
    _emit(args, {"jobs": data, "total": total}, text)
    return 0


def _world_size(ranks: list[dict[str, Any]]) -> int:
    return max([int(r.get("world_size", 0)) for r in ranks] + [len(ranks)])


def _report_row(name: str, t: dict[str, Any]) -> list[str]:
    rate = summary.hit_rate(t, "fxgraph_cache")
    top = next(iter(t["misses"].items()), None)
    return [name, f"{t['reported']}/{t['ranks']}",
            f"{t['fxgraph_cache_hit']}/{t['fxgraph_cache_miss']}",
            f"{t['autograd_cache_hit']}/{t['autograd_cache_miss']}",
            "-" if rate is None else f"{rate:.0f}%", str(t["loaded"]),
            f"{t['waited_s']:.1f} s", human_size(t["bytes_read"]),
            f"{top[0]} ({top[1]})" if top else "-"]


def cmd_explain(args: argparse.Namespace) -> int:
    if args.key is None:
        if not args.sources:
            print("pt2cc explain: give stats files, or a store and --key", file=sys.stderr)
            return 2
        return _explain_files(args)
    url = _url(args.sources[0] if args.sources else None)
    root = open_root(url)
    s = scan(root.fs, root.root, root.retrier)
    found = [k for k in s.components if k[2] == args.key and args.kind in (None, k[1])]
    if not found:
        print(f"pt2cc explain: {url} holds no components for key {args.key!r}", file=sys.stderr)
        return 1
    lines, data = [], []
    for fp, kind, key in found:
        ours = _components(root, s, (fp, kind, key))
        others = [(k[2], c) for k in s.components if k[:2] == (fp, kind) and k[2] != key
                  if (c := _components(root, s, k))]
        best = explain.nearest(ours or {}, others)
        reason = (explain.describe(best[1], ours or {}, dict(others)[best[0]])[1] if best
                  else f"{explain.NEW_GRAPH}: no other {kind} key in this environment")
        data.append({"fingerprint": fp, "kind": kind, "key": key, "reason": reason,
                     "nearest": best[0] if best else None})
        lines.append(f"{kind} {key} ({fp}): {reason}" +
                     (f"\n  nearest: {best[0]}" if best else ""))
    _emit(args, data, "\n".join(lines))
    return 0


def _components(root: StoreRoot, s: Scan, ident: tuple[str, str, str]) \
        -> dict[str, list[str]] | None:
    doc = read_json(root.fs, s.components[ident].path, root.retrier)
    return doc if isinstance(doc, dict) else None


def _explain_files(args: argparse.Namespace) -> int:
    jobs = summary.load_jobs(args.sources)
    lines, data = [], {}
    for name, ranks in jobs.items():
        t = summary.totals(ranks)
        details = [{**d, "rank": r.get("rank")} for r in ranks for d in r.get("miss_details", [])]
        data[name] = {"misses": t["misses"], "details": details}
        lines.append(f"{name}: {sum(t['misses'].values())} misses explained")
        lines += [f"  {n:>5}  {reason}" for reason, n in t["misses"].items()]
        lines += [f"  rank {d['rank']} {d['kind']} {d['key']} (compile {d.get('compile_id')}): "
                  f"{d['reason']}" for d in details[:args.limit]]
    _emit(args, data, "\n".join(lines))
    return 0


def _url(given: str | None) -> str:
    """The store URL given, else PT2CC_CACHE; a clear error if neither."""
    url = given or os.environ.get("PT2CC_CACHE")
    if not url:
        raise StoreError("give a store URL, or set PT2CC_CACHE")
    return url


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pt2cc",
        description="Look after a pt2-cache-coordinator store (any fsspec URL; connection "
                    "settings from fsspec config and the backend's env vars, e.g. AWS_*).",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str, url: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        if url:
            sp.add_argument("url", nargs="?", help="store URL: a path, s3://bucket/prefix, "
                            "... (default: $PT2CC_CACHE)")
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        return sp

    add("ls", "entries by fingerprint, kind and key").set_defaults(func=cmd_ls)
    add("stats", "objects and bytes per fingerprint").set_defaults(func=cmd_stats)
    v = add("verify", "re-hash every object and check signatures; exit 1 if anything is bad")
    v.add_argument("--quarantine", action="store_true",
                   help="move bad objects aside and remove entries that name them")
    v.set_defaults(func=cmd_verify)
    pr = add("prune", "remove old entries and unreferenced objects (dry run unless --yes)")
    pr.add_argument("--older-than", type=argument_type(parse_duration), help="e.g. 30d, 12h")
    pr.add_argument("--max-bytes", type=argument_type(parse_size),
                    help="e.g. 50G; oldest entries go first")
    pr.add_argument("--yes", action="store_true", help="really remove")
    pr.set_defaults(func=cmd_prune)
    rp = add("report", "one table of several jobs' stats files (--stats-file)", url=False)
    rp.add_argument("files", nargs="+", help="PATH.job.json or PATH.rank<R>.json files")
    rp.set_defaults(func=cmd_report)
    ex = add("explain", "why jobs compiled: misses by reason from stats files, or a stored "
             "key against its nearest stored neighbour", url=False)
    ex.add_argument("sources", nargs="*", help="stats files; or, with --key, a store URL "
                    "(default: $PT2CC_CACHE)")
    ex.add_argument("--key", help="explain this stored key (as `pt2cc ls` shows it)")
    ex.add_argument("--kind", help="only this kind (fxgraph, aotautograd)")
    ex.add_argument("--limit", type=int, default=20, help="misses listed one by one")
    ex.set_defaults(func=cmd_explain)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `pt2cc` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if "url" in args:
            args.url = _url(args.url)
        return int(args.func(args))
    except StoreError as e:
        print(f"pt2cc: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
