"""`python -m coordinator` runs a script as plain python would; bad input gets one message."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def launch(args: list[str], tmp_path: Path, env: dict[str, str] | None = None,
           ) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "PT2CC_CACHE": str(tmp_path / "store"),
                "PT2CC_NODE_CACHE_DIR": str(tmp_path / "node"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "coordinator", *args], cwd=tmp_path,
                          env=full_env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "prog.py"
    path.write_text(textwrap.dedent("""
        import sys, torch._inductor.remote_cache as rc
        print("name", __name__)
        print("argv", sys.argv)
        print("path0", sys.path[0])
        print("hooked", rc.RemoteFxGraphCache.backend_override_cls is not None)
        if "--boom" in sys.argv:
            raise RuntimeError("boom from the script")
        sys.exit(int(sys.argv[-1]) if sys.argv[-1].isdigit() else 0)
    """))
    return path


def test_script_runs_as_main_with_its_argv_and_exit_status(script: Path, tmp_path: Path) -> None:
    res = launch(["--log-level", "WARNING", str(script), "--steps", "2", "3"], tmp_path)
    assert res.returncode == 3, res.stderr
    assert "name __main__" in res.stdout
    assert f"argv ['{script}', '--steps', '2', '3']" in res.stdout
    assert f"path0 {script.parent}" in res.stdout
    assert "hooked True" in res.stdout


def test_script_exception_propagates(script: Path, tmp_path: Path) -> None:
    res = launch([str(script), "--boom"], tmp_path)
    assert res.returncode == 1
    assert "RuntimeError: boom from the script" in res.stderr


def test_module_mode_passes_its_own_flags_through(tmp_path: Path) -> None:
    (tmp_path / "mymod.py").write_text("import sys\nprint('argv', sys.argv[1:])\n")
    res = launch(["-m", "mymod", "--cache", "not-ours"], tmp_path,
                 env={"PYTHONPATH": f"{REPO}:{tmp_path}"})
    assert res.returncode == 0, res.stderr
    assert "argv ['--cache', 'not-ours']" in res.stdout


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["missing.py"], {}, "script not found: missing.py"),
        (["--bogus", "x.py"], {}, "unrecognized arguments: --bogus"),
        ([], {}, "name a script to run"),
        (["--wait-timeout", "-1", "{script}"], {}, "wait_timeout_s must be > 0"),
        (["{script}"], {"PT2CC_WAIT_TIMEOUT_S": "soon"}, "PT2CC_WAIT_TIMEOUT_S='soon'"),
        (["--cache", "nosuchproto://x/y", "{script}"], {}, "nosuchproto"),
    ],
)
def test_bad_input_stops_with_one_clear_message(
    args: list[str], env: dict[str, str], message: str, script: Path, tmp_path: Path
) -> None:
    res = launch([a.format(script=script) for a in args], tmp_path, env)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert message in res.stderr
    assert "Traceback" not in res.stderr


def test_snapshot_tags_are_per_project_and_stable(tmp_path: Path) -> None:
    """`<project>:<script>`: two projects' train.py differ; two checkouts of one agree."""
    from coordinator.snapshot import derive_tag

    for checkout in ("a", "b"):
        root = tmp_path / checkout / "llm"
        (root / "train").mkdir(parents=True)
        (root / "pyproject.toml").write_text('[project]\nname = "my-llm"\n')
        (root / "train" / "pretrain.py").write_text("")
        assert derive_tag(str(root / "train" / "pretrain.py")) == "my-llm:train/pretrain"
    other = tmp_path / "vision"
    (other / ".git").mkdir(parents=True)
    (other / "train.py").write_text("")
    assert derive_tag(str(other / "train.py")) == "vision:train"
    loose = tmp_path / "scratch" / "train.py"
    loose.parent.mkdir()
    loose.write_text("")
    assert derive_tag(str(loose)) in ("scratch:train", f"{tmp_path.name}:scratch/train")
    assert derive_tag("no.such.module") == "no.such.module"


@pytest.mark.s3
def test_a_store_only_the_network_can_refuse_leaves_the_script_running(
        script: Path, tmp_path: Path, s3_endpoint: str) -> None:
    """The store opens while the script starts: a missing bucket (which only S3 can tell)
    is one error naming it, the script runs and every rank compiles for itself."""
    res = launch(["--cache", "s3://no-such-bucket-pt2cc/x", str(script)], tmp_path)
    assert res.returncode == 0, res.stderr
    assert "hooked True" in res.stdout
    errors = [line for line in res.stderr.splitlines() if "cannot be used" in line]
    assert len(errors) == 1, res.stderr
    assert "bucket 'no-such-bucket-pt2cc'" in errors[0] and "compiles for itself" in errors[0]
    assert "Traceback" not in res.stderr
