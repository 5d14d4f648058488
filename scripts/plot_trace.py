"""Draw a job's timeline (`--trace DIR` -> DIR/job.trace.json) as a PNG: one row per rank.

    python scripts/plot_trace.py DIR/job.trace.json docs/results/timeline-cpu2.png

Needs matplotlib (not a dependency of the project: `pip install matplotlib`). Perfetto
(https://ui.perfetto.dev) opens the same JSON interactively.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# What a span is, by name: drawn in one colour per group, in this order in the legend.
GROUPS = {
    "torch.compile": "Dynamo compile (whole)",
    "compile fxgraph": "Inductor compile (a miss)",
    "compile aotautograd": "AOTAutograd compile (a miss)",
    "wait": "waiting for another rank",
    "object_fetch": "loading from the store",
    "place_kernels": "loading from the store",
    "snapshot_fetch": "snapshot",
    "snapshot_place_files": "snapshot",
    "snapshot_load_megacache": "snapshot",
    "snapshot_publish": "publishing",
    "publish": "publishing",
}
# Bar heights: a span nests inside the taller ones drawn before it.
HEIGHTS = {"Dynamo compile (whole)": 0.8, "AOTAutograd compile (a miss)": 0.62,
           "Inductor compile (a miss)": 0.44, "waiting for another rank": 0.44,
           "snapshot": 0.44, "loading from the store": 0.26, "publishing": 0.26}
COLOURS = {"Dynamo compile (whole)": "#d9d9d9", "Inductor compile (a miss)": "#e6550d",
           "AOTAutograd compile (a miss)": "#fdae6b", "waiting for another rank": "#3182bd",
           "loading from the store": "#31a354", "snapshot": "#74c476", "publishing": "#756bb1"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trace", type=Path)
    p.add_argument("png", type=Path)
    p.add_argument("--title", default=None)
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spans = [e for e in json.loads(args.trace.read_text())["traceEvents"]
             if e.get("ph") == "X" and e["name"] in GROUPS]
    if not spans:
        raise SystemExit(f"{args.trace}: no spans to draw")
    t0 = min(e["ts"] for e in spans)
    ranks = sorted({e["pid"] for e in spans})
    fig, ax = plt.subplots(figsize=(12, 1.6 + 0.6 * len(ranks)))
    seen: set[str] = set()
    for e in sorted(spans, key=lambda e: -HEIGHTS[GROUPS[e["name"]]]):  # outer spans first
        group = GROUPS[e["name"]]
        ax.barh(ranks.index(e["pid"]), max(e["dur"] / 1e6, 0.02), left=(e["ts"] - t0) / 1e6,
                height=HEIGHTS[group], color=COLOURS[group],
                label=None if group in seen else group, edgecolor="none")
        seen.add(group)
    ax.set_yticks(range(len(ranks)), [f"rank {r}" for r in ranks])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first traced step")
    ax.set_title(args.title or args.trace.name)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: list(COLOURS).index(labels[i]))
    ax.legend([handles[i] for i in order], [labels[i] for i in order], loc="upper left",
              bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=110)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
