"""examples/train.py as a launcher that re-executes the script per rank runs it (Lightning's
`python train.py`): the script installs the coordinator itself, PT2CC_CACHE names the store."""

import runpy
from pathlib import Path

import coordinator

coordinator.install()  # before the first compile; PT2CC_* variables configure it

runpy.run_path(str(Path(__file__).resolve().parents[2] / "examples" / "train.py"),
               run_name="__main__")
