"""The private PyTorch hooks we rely on: this fails loudly the day a release removes one."""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import pytest

from coordinator import compat


@pytest.mark.parametrize("kind", sorted(compat.REMOTE_CACHE_CLASSES))
def test_every_remote_cache_class_has_the_override_point(kind: str) -> None:
    from torch._inductor.remote_cache import RemoteCache

    cls = compat.remote_cache_class(kind)  # raises TorchHookMissing where it is gone
    assert issubclass(cls, RemoteCache)
    assert "backend_override_cls" in vars(RemoteCache)


def test_guarded_caches_iterate_over_candidates() -> None:
    from torch._functorch._aot_autograd.autograd_cache import AOTAutogradCache
    from torch._inductor.codecache import FxGraphCache

    guarded = compat.guarded_cache_class()
    assert issubclass(FxGraphCache, guarded) and issubclass(AOTAutogradCache, guarded)
    # Our wrapper sits on the mixin: a subclass that overrode it would bypass us.
    assert "iterate_over_candidates" not in vars(FxGraphCache)
    assert "iterate_over_candidates" not in vars(AOTAutogradCache)
    assert compat.guarded_kind(FxGraphCache) == "fxgraph"
    assert compat.guarded_kind(AOTAutogradCache) == "aotautograd"


@pytest.mark.parametrize("from_env", [True, False])
def test_cache_dirs_are_inductors_own(tmp_path, monkeypatch, from_env: bool) -> None:
    """Worked out without importing Inductor (install() imports it later): the same dirs."""
    from torch._inductor import codecache
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    if from_env:
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    else:
        monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    ours = compat.inductor_cache_dir()
    assert ours == cache_dir()  # (which sets the variable to what it found)
    assert compat.precompiled_header_dir() == codecache._HEADER_DIR


def test_cache_configs_switch_on_and_back() -> None:
    import torch._inductor.config as inductor_config

    before = inductor_config.fx_graph_remote_cache
    previous = compat.enable_caches()
    try:
        assert inductor_config.fx_graph_remote_cache is True
        assert inductor_config.bundled_autotune_remote_cache is False
    finally:
        compat.restore_configs(previous)
    assert inductor_config.fx_graph_remote_cache == before


class Recorder:
    """Stands in for Artifacts behind the real hooks: records the keys each hook sees."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def offer_local(self, kind: str, key: str, subdir: str) -> None:
        self.calls.append(("offer", kind, key))

    def get(self, kind: str, key: str) -> None:
        self.calls.append(("get", kind, key))

    def put(self, kind: str, key: str, value: bytes) -> None:
        self.calls.append(("put", kind, key))

    def note_specialised(self, kind: str, key: str) -> None:
        pass

    def compile_started(self) -> None:
        pass

    def compile_ended(self) -> None:
        pass


def test_remote_key_matches_what_the_backend_sees(tmp_path, monkeypatch) -> None:
    """The key we compute before guard evaluation is the one PyTorch's remote cache hands
    its backend on lookup and publish: otherwise no stored variant would ever be offered."""
    import torch

    from coordinator import hooks

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # a miss: get and put run
    recorder = Recorder()
    headers: list[str] = []
    used = SimpleNamespace(note_header_used=headers.append)
    undo = hooks.install(recorder, kernels=used)  # type: ignore[arg-type]
    try:
        torch._dynamo.reset()
        torch.compile(lambda x: x.sin() + 1)(torch.ones(3))
    finally:
        undo()
        torch._dynamo.reset()
    keys = {event: {k for e, kind, k in recorder.calls if e == event and kind == "fxgraph"}
            for event in ("offer", "get", "put")}
    assert keys["offer"] and keys["offer"] == keys["get"] == keys["put"], recorder.calls
    # The header watch saw the precompiled header Inductor used (built or found).
    assert headers and all(os.path.dirname(h) == compat.precompiled_header_dir()
                           and os.path.exists(h + ".gch") for h in headers), headers


def test_each_install_sees_aotautograd_lookups(tmp_path, monkeypatch) -> None:
    """AOTAutograd memoises its remote cache per process: after an uninstall and a new
    install (a notebook, a test suite) its lookups and publishes reach the new hooks."""
    import torch

    from coordinator import hooks

    seen = []
    for i in range(2):
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / str(i)))
        recorder = Recorder()
        undo = hooks.install(recorder)  # type: ignore[arg-type]
        try:
            torch._dynamo.reset()
            torch.compile(lambda x: x.cos() * 2)(torch.ones(3, requires_grad=True)).sum().backward()
        finally:
            undo()
            torch._dynamo.reset()
        seen.append({e for e, kind, _ in recorder.calls if kind == "aotautograd"})
    assert seen == [{"offer", "get", "put"}] * 2, seen


def test_compile_callbacks_survive_dynamo_reset() -> None:
    """User code calls torch._dynamo.reset() between compiles; it clears every callback."""
    import torch
    from torch._dynamo.callback import callback_handler

    ended: list[object] = []
    remove = compat.register_compile_callbacks(lambda _a: None, ended.append)
    try:
        torch._dynamo.reset()
        assert ended.append in callback_handler.end_callbacks
        torch.compile(lambda x: x + 1, backend="eager")(torch.ones(2))
        assert ended, "the end callback did not fire after a reset"
    finally:
        remove()
    assert ended.append not in callback_handler.end_callbacks
    assert "clear" not in vars(callback_handler)


def test_compile_workers_start_where_inductor_would_start_them() -> None:
    """With Triton, the workers' sidecar is started and asked to get ready; without, none."""
    from torch._inductor import async_compile
    from torch.utils._triton import has_triton_package

    compat.start_compile_workers()
    expected = (has_triton_package() and async_compile.get_compile_threads() > 1
                and os.environ.get("TORCH_WARM_POOL", "1") == "1")
    assert (async_compile.AsyncCompile._ready_future is not None) == expected


def test_compile_workers_that_fail_to_start_leave_the_job_alone(monkeypatch, caplog) -> None:
    from torch._inductor import async_compile

    def broken() -> None:
        raise RuntimeError("no processes in a daemonic process")

    monkeypatch.setattr(async_compile, "maybe_warm_pool", broken)
    logger = logging.getLogger("coordinator.compat")  # ours do not propagate once set up
    logger.addHandler(caplog.handler)
    try:
        compat.start_compile_workers()  # does not raise: the first compile tries again
    finally:
        logger.removeHandler(caplog.handler)
    assert "compile workers did not start (no processes in a daemonic process)" in caplog.text
