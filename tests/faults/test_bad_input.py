"""Bad input to the launcher: one clear message, exit 2, no traceback (what
tests/coordinator/test_launcher.py does not cover already)."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.multiprocess.jobs import REPO


def launch(args: list[str], tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(REPO), "PT2CC_CACHE": str(tmp_path / "store"),
            "PT2CC_NODE_CACHE_DIR": str(tmp_path / "node"), **env}
    for var in ("PT2CC_SIGNING_KEY", "PT2CC_SIGNING_KEY_FILE"):
        if var not in env:
            full.pop(var, None)
    return subprocess.run([sys.executable, "-m", "coordinator", *args], cwd=tmp_path,
                          env=full, capture_output=True, text=True, timeout=120)


def _files(tmp_path: Path) -> dict[str, str]:
    script = tmp_path / "prog.py"
    script.write_text("print('the script ran')\n")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    open_key = tmp_path / "open.key"
    open_key.write_text("secret")
    open_key.chmod(0o644)
    empty_key = tmp_path / "empty.key"
    empty_key.write_text("")
    empty_key.chmod(0o600)
    return {"script": str(script), "file": str(a_file), "open_key": str(open_key),
            "empty_key": str(empty_key), "missing": str(tmp_path / "nope.key")}


CASES = [
    # malformed URLs, by flag and by variable
    (["--cache", "s3:/bucket/x", "{script}"], {}, "did you mean s3://"),
    (["--cache", "s3://", "{script}"], {}, "no bucket or host after 's3://'"),
    (["{script}"], {"PT2CC_CACHE": "bad proto://x"}, "is not a valid protocol name"),
    (["--cache", "{file}", "{script}"], {}, "is a file, not a directory"),
    (["--cache", "nosuchfs://bucket/x", "{script}"], {}, "unknown protocol in store URL"),
    # unknown or bad options
    (["--node-cache-max-bytes", "10Q", "{script}"], {}, "is not a size like 500M"),
    (["--wait-timeout", "soon", "{script}"], {}, "argument --wait-timeout: invalid float"),
    (["--log-level", "LOUD", "{script}"], {}, "argument --log-level: invalid choice"),
    (["--cache"], {}, "argument --cache: expected one argument"),
    # a missing target
    (["-m", "no_such_module_pt2cc"], {}, "module not found: no_such_module_pt2cc"),
    # PT2CC_* variables with bad values
    (["{script}"], {"PT2CC_SNAPSHOT": "maybe"}, "PT2CC_SNAPSHOT='maybe' is not a valid bool"),
    (["{script}"], {"PT2CC_NODE_CACHE_MAX_BYTES": "lots"}, "PT2CC_NODE_CACHE_MAX_BYTES='lots'"),
    (["{script}"], {"PT2CC_HEARTBEAT_S": "0"}, "heartbeat_s must be > 0"),
    (["{script}"], {"PT2CC_STALE_AFTER_S": "1"}, "must be at least twice heartbeat_s"),
    (["{script}"], {"PT2CC_LOG_LEVEL": "LOUD"}, "log level must be DEBUG, INFO, WARNING"),
    (["{script}"], {"PT2CC_NODE_CACHE_DIR": "{file}"}, "node cache directory"),
    # signing keys
    (["{script}"], {"PT2CC_SIGNING_KEY_FILE": "{open_key}"},
     "is accessible by group/others (mode -rw-r--r--); run `chmod 600"),
    (["{script}"], {"PT2CC_SIGNING_KEY_FILE": "{missing}"}, "cannot be read"),
    (["{script}"], {"PT2CC_SIGNING_KEY_FILE": "{empty_key}"}, "is empty"),
    (["{script}"], {"PT2CC_SIGNING_KEY": "k", "PT2CC_SIGNING_KEY_FILE": "{empty_key}"},
     "both PT2CC_SIGNING_KEY and PT2CC_SIGNING_KEY_FILE are set"),
]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[subprocess.CompletedProcess]:
    """Every case launched at once: most stop before importing torch, some after. Their
    directories are made first: pytest's temporary directories are not thread-safe."""
    tmps = [tmp_path_factory.mktemp(f"bad{i}") for i in range(len(CASES))]

    def one(i: int) -> subprocess.CompletedProcess:
        files = _files(tmps[i])
        args, env, _ = CASES[i]
        return launch([a.format(**files) for a in args], tmps[i],
                      {k: v.format(**files) for k, v in env.items()})

    with ThreadPoolExecutor(max_workers=6) as pool:
        return list(pool.map(one, range(len(CASES))))


@pytest.mark.parametrize("case", range(len(CASES)),
                         ids=[c[2].split(";")[0][:40] for c in CASES])
def test_bad_input_stops_with_one_clear_message(case: int, results: list) -> None:
    res, message = results[case], CASES[case][2]
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, res.stderr
    assert "the script ran" not in res.stdout
