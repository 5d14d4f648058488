"""The thin adapter between PyTorch's cache machinery and `Artifacts`: no policy here.

Two private integration points (see compat.py): each remote cache class's
`backend_override_cls`, whose backend sees every remote lookup and publish of its kind,
and `GuardedCache.iterate_over_candidates`, wrapped so that every stored variant of a key
sits in PyTorch's local cache dir before PyTorch evaluates guards on the candidates.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator
from typing import Any

from coordinator import compat
from coordinator.artifacts import GUARDED_KINDS, Artifacts


def install(artifacts: Artifacts, *, ddp_graph_split: bool = True) -> Callable[[], None]:
    """Hook PyTorch; returns a function that undoes every change."""
    from torch._inductor.remote_cache import RemoteCacheBackend

    class StoreBackend(RemoteCacheBackend[bytes]):
        """Bytes in and out of our store, for one kind of cache."""

        def __init__(self, kind: str) -> None:
            super().__init__()
            self._kind = kind

        def _get(self, key: str) -> bytes | None:
            return artifacts.get(self._kind, key)

        def _put(self, key: str, data: bytes) -> None:
            artifacts.put(self._kind, key, data)

    undo: list[Callable[[], None]] = []
    for kind in compat.REMOTE_CACHE_CLASSES:
        cls = compat.remote_cache_class(kind)
        previous = cls.__dict__.get("backend_override_cls")
        cls.backend_override_cls = functools.partial(StoreBackend, kind)
        undo.append(functools.partial(_restore_attr, cls, "backend_override_cls", previous))

    guarded = compat.guarded_cache_class()
    original = guarded.__dict__["iterate_over_candidates"]

    def iterate_over_candidates(
        cls: type, local: bool, remote_cache: Any, key: str
    ) -> Generator[Any, None, None]:
        kind = compat.guarded_kind(cls)
        if not (local and remote_cache is not None and kind in GUARDED_KINDS):
            yield from original.__func__(cls, local, remote_cache, key)
            return
        remote = compat.remote_key(remote_cache, key)
        artifacts.offer_local(kind, remote, cls._get_tmp_dir_for_key(key))
        for candidate in original.__func__(cls, local, remote_cache, key):
            yield candidate
            # Asked for the next one: PyTorch's guards rejected this candidate.
            if compat.has_guards(candidate):
                artifacts.note_specialised(kind, remote)

    guarded.iterate_over_candidates = classmethod(iterate_over_candidates)
    undo.append(lambda: setattr(guarded, "iterate_over_candidates", original))

    previous_configs = compat.enable_caches()
    if not ddp_graph_split:
        previous_configs.update(compat.disable_ddp_graph_split())
    undo.append(lambda: compat.restore_configs(previous_configs))
    undo.append(compat.register_compile_callbacks(
        lambda _args: artifacts.compile_started(), lambda _args: artifacts.compile_ended()))

    def uninstall() -> None:
        for step in reversed(undo):
            step()

    return uninstall


def _restore_attr(cls: type, name: str, previous: Any) -> None:
    if previous is not None:
        setattr(cls, name, previous)
    elif name in cls.__dict__:
        delattr(cls, name)  # back to the base class's None
