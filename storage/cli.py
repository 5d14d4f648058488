"""`pt2cc`: look after an artifact store (ls, stats, verify, prune). Never imports torch."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from storage.errors import StoreError
from storage.maintenance import apply_prune, group_entries, open_root, plan_prune, scan, summarize
from storage.maintenance import verify as verify_store
from storage.signing import load_signing_key
from storage.units import argument_type, human_age, human_size, parse_duration, parse_size


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in [header, *rows])


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else text)


def cmd_ls(args: argparse.Namespace) -> int:
    root = open_root(args.url)
    groups = group_entries(scan(root.fs, root.root, root.retrier).entries)
    now = time.time()
    rows = [[g["fingerprint"], g["kind"], g["key"], str(g["variants"]), human_size(g["bytes"]),
             human_age(now - g["newest"])] for g in groups]
    text = _table(rows, ["FINGERPRINT", "KIND", "KEY", "VARIANTS", "SIZE", "AGE"]) if rows \
        else f"{args.url}: no entries"
    _emit(args, groups, text)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    root = open_root(args.url)
    per_fp = summarize(scan(root.fs, root.root, root.retrier))
    total = {k: sum(v[k] for v in per_fp.values()) for k in
             ("entries", "keys", "objects", "bytes", "quarantined", "dangling")}
    rows = [[fp, str(v["keys"]), str(v["entries"]), str(v["objects"]), human_size(v["bytes"]),
             str(v["quarantined"])] for fp, v in per_fp.items()]
    rows.append(["TOTAL", str(total["keys"]), str(total["entries"]), str(total["objects"]),
                 human_size(total["bytes"]), str(total["quarantined"])])
    text = _table(rows, ["FINGERPRINT", "KEYS", "ENTRIES", "OBJECTS", "BYTES", "QUARANTINED"])
    _emit(args, {"url": args.url, "fingerprints": per_fp, "total": total}, text)
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
            f"{len(plan.quarantine)} quarantined files: {human_size(plan.bytes_freed)} of "
            f"{human_size(plan.bytes_before)}")
    if not plan.applied:
        text = "dry run: " + text + " (run with --yes to apply)"
    _emit(args, plan.as_dict(), text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pt2cc",
        description="Look after a pt2-cache-coordinator store (any fsspec URL; connection "
                    "settings from fsspec config and the backend's env vars, e.g. AWS_*).",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("url", help="store URL: a path, s3://bucket/prefix, ...")
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
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `pt2cc` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except StoreError as e:
        print(f"pt2cc: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
