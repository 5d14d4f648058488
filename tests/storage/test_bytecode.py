"""The backend's bytecode kept on the node where the interpreter writes none (real imports in
fresh interpreters: the setting is the process's)."""

from __future__ import annotations

import os
import py_compile
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _python(code: str, tmp_path: Path, dont_write: bool) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    if dont_write:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(tmp_path / "src")])
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip()


def _modules(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("inside_mod", "outside_mod"):
        (src / f"{name}.py").write_text("VALUE = 1\n")
    return src


def _pycs(directory: Path, name: str) -> list[Path]:
    return list(directory.rglob(f"{name}.*.pyc")) if directory.exists() else []


IMPORT_BOTH = """
    import sys
    from storage.bytecode import kept_under
    with kept_under({prefix!r}, ["inside_mod"]):
        import inside_mod
    import outside_mod
    print(sys.dont_write_bytecode, sys.pycache_prefix, inside_mod.__cached__)
"""


def test_only_what_is_imported_inside_is_kept_and_the_setting_comes_back(tmp_path):
    src, prefix = _modules(tmp_path), tmp_path / "node" / ".bytecode"
    out = _python(IMPORT_BOTH.format(prefix=str(prefix)), tmp_path, dont_write=True)
    dont_write, pycache_prefix, cached = out.split()
    assert (dont_write, pycache_prefix) == ("True", "None")
    [kept] = _pycs(prefix, "inside_mod")
    assert str(kept) == cached
    assert _pycs(prefix, "outside_mod") == [] and _pycs(src, "outside_mod") == []
    assert _pycs(src, "inside_mod") == []  # nothing written beside the sources

    # The next process on the node reads it: Python rewrites only a stale or missing one.
    written = kept.stat().st_mtime_ns
    again = _python(IMPORT_BOTH.format(prefix=str(prefix)), tmp_path, dont_write=True)
    assert again.split()[2] == cached and kept.stat().st_mtime_ns == written


def test_an_interpreter_that_writes_bytecode_is_left_alone(tmp_path):
    src, prefix = _modules(tmp_path), tmp_path / "node" / ".bytecode"
    _python(IMPORT_BOTH.format(prefix=str(prefix)), tmp_path, dont_write=False)
    assert not prefix.exists()
    assert _pycs(src, "inside_mod") and _pycs(src, "outside_mod")


def test_a_package_installed_with_its_bytecode_is_read_where_it_is(tmp_path):
    """Redirected, Python would compile it once more on every fresh node."""
    src, prefix = _modules(tmp_path), tmp_path / "node" / ".bytecode"
    py_compile.compile(str(src / "inside_mod.py"), doraise=True)
    _python(IMPORT_BOTH.format(prefix=str(prefix)), tmp_path, dont_write=True)
    assert not prefix.exists()


def test_opening_a_store_keeps_its_backend_bytecode_in_the_node_cache(tmp_path):
    node = tmp_path / "node"
    (_modules(tmp_path) / "fake_backend.py").write_text(
        "from fsspec.implementations.memory import MemoryFileSystem\n\n\n"
        "class FakeFileSystem(MemoryFileSystem):\n    protocol = 'pt2cctest'\n")
    _python(f"""
        from fsspec.registry import register_implementation
        from storage import prepare_store
        register_implementation("pt2cctest", "fake_backend.FakeFileSystem")
        prepare_store("pt2cctest://bucket/store", fingerprint="fp",
                      node_cache_dir={str(node)!r}).open()
    """, tmp_path, dont_write=True)
    assert _pycs(node / ".bytecode", "fake_backend"), "the backend was not kept"
    assert not _pycs(tmp_path / "src", "fake_backend")
