"""install() starts the snapshot's prefetch before it imports Dynamo (fresh interpreters:
what a process has imported is the process's)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

INSTALL = """
    import sys
    import torch
    from coordinator import api, snapshot

    seen = []
    start = snapshot.Snapshots.start_prefetch

    def start_prefetch(self):
        seen.append("torch._dynamo" in sys.modules)
        start(self)

    snapshot.Snapshots.start_prefetch = start_prefetch
    api.install({store!r})
    print(seen, "torch._dynamo" in sys.modules)
"""


def test_the_prefetch_starts_before_dynamo_is_imported(tmp_path: Path) -> None:
    """The snapshot's files are written beside Dynamo's import, not after it: on a fresh
    CPU node the first compile waited for them (README, design notes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PT2CC_", "TORCH"))}
    env.update(PYTHONPATH=str(REPO), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"),
               PT2CC_NODE_CACHE_DIR=str(tmp_path / "node"), TMPDIR=str(tmp_path))
    code = textwrap.dedent(INSTALL.format(store=str(tmp_path / "store")))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300, check=True)
    assert out.stdout.split("\n")[0].strip() == "[False] True", out.stdout + out.stderr
