"""The thin adapter between PyTorch's cache machinery and `Artifacts`: no policy here.

Two private integration points (see compat.py): each remote cache class's backend
override, whose backend sees every remote lookup and publish of its kind, and the
generator of candidates PyTorch evaluates guards on, wrapped so that every stored variant
of a key sits in PyTorch's local cache dir before the guards are evaluated. And a watch on
the precompiled headers Inductor uses, for what snapshots carry.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from coordinator import compat
from coordinator.artifacts import GUARDED_KINDS, Artifacts
from coordinator.explain import Explainer
from coordinator.kernels import KernelFiles


def install(artifacts: Artifacts, explainer: Explainer | None = None, *,
            kernels: KernelFiles | None = None,
            ddp_graph_split: bool = True) -> Callable[[], None]:
    """Hook PyTorch; returns a function that undoes every change."""

    class StoreBackend(compat.store_backend_base()):  # type: ignore[misc]
        """Bytes in and out of our store, for one kind of cache."""

        def __init__(self, kind: str) -> None:
            super().__init__()
            self._kind = kind

        def _get(self, key: str) -> bytes | None:
            return artifacts.get(self._kind, key)

        def _put(self, key: str, data: bytes) -> None:
            artifacts.put(self._kind, key, data)

    undo = [compat.set_backend_override(kind, functools.partial(StoreBackend, kind))
            for kind in compat.REMOTE_CACHE_CLASSES]

    def candidates(pytorchs: Callable[[], compat.Candidates], cls: type, local: bool,
                   remote_cache: Any, key: str) -> compat.Candidates:
        kind = compat.guarded_kind(cls)
        if not (local and remote_cache is not None and kind in GUARDED_KINDS):
            yield from pytorchs()
            return
        remote = compat.remote_key(remote_cache, key)
        artifacts.offer_local(kind, remote, compat.local_dir_for_key(cls, key))
        for candidate in pytorchs():
            yield candidate
            # Asked for the next one: PyTorch's guards rejected this candidate.
            if compat.has_guards(candidate):
                artifacts.note_specialised(kind, remote)

    undo.append(compat.wrap_candidates(candidates))
    if kernels is not None:  # which of the shared headers a snapshot carries
        undo.append(compat.watch_precompiled_headers(kernels.note_header_used))
    if explainer is not None:  # every key PyTorch computes reaches it with its components
        undo.append(compat.capture_key_components(explainer.computed, explainer.wants_lines))
    previous_configs = compat.enable_caches()
    if not ddp_graph_split:
        previous_configs.update(compat.disable_ddp_graph_split())
    undo.append(lambda: compat.restore_configs(previous_configs))
    undo.append(compat.register_compile_callbacks(
        lambda _args: artifacts.compile_started(), lambda _args: artifacts.compile_ended()))

    compat.forget_remote_caches()
    undo.append(compat.forget_remote_caches)

    def uninstall() -> None:
        for step in reversed(undo):
            step()

    return uninstall
