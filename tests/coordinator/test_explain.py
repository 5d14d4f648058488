"""Every miss explained: real compiles in this process against a store one job filled.

The first compile publishes `fn` on float32 inputs (the "job before"). Each case then runs
as a new job on a fresh node (empty local caches) with one thing changed, and must name
that thing. Compiles are slow on CPU: one baseline for the module, one compile per case.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import coordinator
from coordinator import api, fingerprint

FORMER_TORCH = "2.0.0-former"


def fn(x: torch.Tensor) -> torch.Tensor:
    return (x.sin() + 1).sum(dim=1)


def changed_line(x: torch.Tensor) -> torch.Tensor:
    return (x.cos() + 1).sum(dim=1)


def compile_as_new_job(node: Path, store: Path, call: Callable[[], object],
                       monkeypatch: pytest.MonkeyPatch, **settings: object) -> dict:
    """install -> compile -> uninstall, on a fresh node: returns the rank's stats."""
    with monkeypatch.context() as m:
        m.setenv("TORCHINDUCTOR_CACHE_DIR", str(node / "inductor"))
        m.setenv("TRITON_CACHE_DIR", str(node / "triton"))
        torch._dynamo.reset()
        coordinator.install(str(store), node_cache_dir=str(node / "objects"), snapshot=False,
                            **settings)
        try:
            call()
        finally:
            snap = api.uninstall()
            torch._dynamo.reset()
    assert snap is not None
    return snap


def reasons(snap: dict, kind: str = "fxgraph") -> list[str]:
    return [d["reason"] for d in snap["miss_details"] if d["kind"] == kind]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("explain")
    with pytest.MonkeyPatch.context() as m:
        snap = compile_as_new_job(tmp / "node0", tmp / "store",
                                  lambda: torch.compile(fn)(torch.ones(3, 4)), m)
    assert reasons(snap) == ["new graph: the store held no fxgraph entries"], snap
    assert set(snap["misses"]) == {"new graph"}, snap["misses"]
    # What install() does before the script runs, timed (moved work or added work).
    assert {"torch_import", "dynamo_import", "compile_workers_start", "fingerprint", "store_open",
            "hooks_install"} <= set(
        snap["phases"]), snap["phases"]
    return tmp / "store"


def test_a_changed_inductor_config_option(store: Path, tmp_path: Path, monkeypatch) -> None:
    def call() -> None:
        with torch._inductor.config.patch(max_autotune_pointwise=True):
            torch.compile(fn)(torch.ones(3, 4))

    snap = compile_as_new_job(tmp_path, store, call, monkeypatch)
    assert reasons(snap) == ["nearest stored entry differs in: Inductor config "
                             "max_autotune_pointwise (False -> True)"], snap["miss_details"]
    assert snap["misses"]["differs in: Inductor config"] >= 1


def test_a_changed_line_of_the_model(store: Path, tmp_path: Path, monkeypatch) -> None:
    snap = compile_as_new_job(tmp_path, store,
                              lambda: torch.compile(changed_line)(torch.ones(3, 4)), monkeypatch)
    (reason,) = reasons(snap)
    assert reason.startswith("nearest stored entry differs in: graph code"), reason
    assert "Inductor config" not in reason and "input" not in reason


def test_a_changed_input_dtype(store: Path, tmp_path: Path, monkeypatch) -> None:
    snap = compile_as_new_job(tmp_path, store, lambda: torch.compile(fn)(
        torch.ones(3, 4, dtype=torch.float64)), monkeypatch)
    (reason,) = reasons(snap)
    assert reason.startswith("nearest stored entry differs in: input 0 ("), reason
    assert "dtype=torch.float32 -> torch.float64" in reason, reason


def test_a_changed_environment(store: Path, tmp_path: Path, monkeypatch) -> None:
    """Another torch release: a new fingerprint, nothing of this kind under it."""
    real = fingerprint.describe
    monkeypatch.setattr(fingerprint, "describe", lambda: {**real(), "torch": FORMER_TORCH})
    snap = compile_as_new_job(tmp_path, store, lambda: torch.compile(fn)(torch.ones(3, 4)),
                              monkeypatch)
    (reason,) = reasons(snap)
    assert reason.startswith("environment differs: no fxgraph entries for this environment")
    assert f"torch {torch.__version__} -> {FORMER_TORCH}" in reason, reason


def test_unwritable_stats_and_trace_paths_cost_one_line(store: Path, tmp_path: Path,
                                                        monkeypatch, caplog) -> None:
    """A warm job (nothing compiled) whose stats and trace paths cannot be written."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    ours = logging.getLogger("coordinator")  # it does not propagate to caplog's root handler
    ours.addHandler(caplog.handler)
    try:
        snap = compile_as_new_job(tmp_path / "node", store,
                                  lambda: torch.compile(fn)(torch.ones(3, 4)), monkeypatch,
                                  stats_file=str(blocker / "stats"), trace=str(blocker / "t"))
    finally:
        ours.removeHandler(caplog.handler)
    assert snap["fxgraph_cache_hit"] == 1 and snap["misses"] == {}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(w.startswith(f"trace directory {blocker / 't'} is not usable") for w in warnings)
    assert any(w.startswith(f"writing stats to {blocker / 'stats'} failed") for w in warnings)


def test_a_warm_hit_computes_no_key_components(store: Path, tmp_path: Path,
                                               monkeypatch) -> None:
    """AOTAutograd's per-part lines re-hash the whole graph: computed for keys the store
    lacks (the job before published them), not for keys it holds."""
    assert list(store.glob("**/index/aotautograd/*/components.json")), "none published"
    pickler = torch._inductor.codecache.FxGraphCachePickler
    calls = []
    real = pickler.debug_lines
    monkeypatch.setattr(pickler, "debug_lines", lambda self, d: calls.append(1) or real(self, d))
    snap = compile_as_new_job(tmp_path, store, lambda: torch.compile(fn)(torch.ones(3, 4)),
                              monkeypatch)
    assert snap["autograd_cache_hit"] == 1 and snap["misses"] == {}, snap
    assert calls == []
