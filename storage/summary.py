"""Job summaries from the coordinator's per-rank stats: totals, the `ccache -s`-style text
the job logs at exit, and the table `pt2cc report` prints for several jobs.

Plain dicts in, text out: `pt2cc` reads stats files on machines without torch.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from storage.errors import StoreError
from storage.units import human_size

KINDS = (("fxgraph_cache", "FX graphs"), ("autograd_cache", "AOTAutograd"))
_COUNTED = ("claimed", "loaded", "loaded_after_wait", "published", "waits", "waits_skipped",
            "store_errors")
_RANK_FILE = re.compile(r"^(?P<job>.*)\.rank(?P<rank>\d+)\.json$")


class StatsFileError(StoreError):
    """A stats file that is missing, unreadable or not the coordinator's."""


def totals(ranks: list[dict[str, Any]], world_size: int | None = None) -> dict[str, Any]:
    """One job's counters summed over the ranks that reported."""
    out: dict[str, Any] = {"ranks": world_size or len(ranks), "reported": len(ranks)}
    for prefix, _ in KINDS:
        for n in ("hit", "miss", "bypass"):
            out[f"{prefix}_{n}"] = sum(int(r.get(f"{prefix}_{n}", 0)) for r in ranks)
    for name in _COUNTED:
        out[name] = sum(int(r.get(name, 0)) for r in ranks)
    out["waited_s"] = round(sum(float(r.get("waited_s", 0.0)) for r in ranks), 3)
    out["wasted_wait_s"] = round(sum(float(r.get("wasted_wait_s", 0.0)) for r in ranks), 3)
    for name in ("bytes_read", "bytes_written"):
        out[name] = sum(int((r.get("store") or {}).get(name, 0)) for r in ranks)
    misses: Counter[str] = Counter()
    for r in ranks:
        misses.update({str(k): int(v) for k, v in (r.get("misses") or {}).items()})
    out["misses"] = dict(misses.most_common())
    return out


def hit_rate(t: dict[str, Any], prefix: str) -> float | None:
    lookups = t[f"{prefix}_hit"] + t[f"{prefix}_miss"]
    return None if lookups == 0 else 100.0 * t[f"{prefix}_hit"] / lookups


def text(t: dict[str, Any], title: str = "job summary") -> str:
    """The job's summary as a few aligned lines, in the manner of `ccache -s`."""
    missing = t["ranks"] - t["reported"]
    lines = [f"{title}: {t['ranks']} ranks" + (f" ({missing} did not report)" if missing
                                                 else "")]
    for prefix, name in KINDS:
        rate = hit_rate(t, prefix)
        lines.append(
            f"  {name:<12} lookups {t[f'{prefix}_hit'] + t[f'{prefix}_miss']:>6}   "
            f"hits {t[f'{prefix}_hit']:>6}   misses {t[f'{prefix}_miss']:>6}   "
            f"bypassed {t[f'{prefix}_bypass']:>4}   hit rate "
            + ("     -" if rate is None else f"{rate:5.1f}%"))
    lines.append(f"  compiled while others waited {t['claimed']}, loaded {t['loaded']} "
                 f"({t['loaded_after_wait']} after a wait), published {t['published']}")
    lines.append(f"  waited {t['waits']} times, {t['waited_s']:.1f} s in all "
                 f"({t['wasted_wait_s']:.1f} s before compiling all the same)")
    lines.append(f"  fetched {human_size(t['bytes_read'])}, wrote "
                 f"{human_size(t['bytes_written'])}, store errors {t['store_errors']}")
    if t["misses"]:
        lines.append("  misses: " + "; ".join(f"{reason} {n}" for reason, n in
                                              t["misses"].items()))
    return "\n".join(lines)


def load_jobs(paths: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Stats files (per-rank `<name>.rank<R>.json` or per-job `<name>.job.json`) grouped
    into jobs: {job name: its ranks' stats}. Raises StatsFileError naming a bad file."""
    jobs: dict[str, list[dict[str, Any]]] = {}
    for path in paths:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise StatsFileError(f"{path}: not a readable JSON stats file ({exc})") from None
        if isinstance(doc, dict) and isinstance(doc.get("ranks"), list):
            jobs[path.removesuffix(".job.json")] = [r for r in doc["ranks"]
                                                    if isinstance(r, dict)]
        elif isinstance(doc, dict) and "rank" in doc and "fxgraph_cache_miss" in doc:
            match = _RANK_FILE.match(path)
            jobs.setdefault(match["job"] if match else path, []).append(doc)
        else:
            raise StatsFileError(f"{path}: not a pt2cc stats file (no 'ranks' list, no 'rank')")
    return jobs
