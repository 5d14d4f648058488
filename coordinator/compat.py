"""Every private PyTorch name the coordinator touches, and every version difference, here.

Both torch 2.11 (GPU machines) and 2.13 (CPU CI) are supported. A missing hook raises
TorchHookMissing at install, and tests/coordinator/test_compat.py fails loudly the day a
release removes one, instead of the coordinator silently doing nothing.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import getpass
import hashlib
import importlib
import json
import logging
import os
import pickle
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from coordinator.errors import TorchHookMissing

log = logging.getLogger(__name__)

# Our kind name -> the RemoteCache subclass in torch._inductor.remote_cache that asks for it.
# Kinds are told apart by the subclass, never by parsing keys (autotune keys name no cache).
REMOTE_CACHE_CLASSES: dict[str, str] = {
    "fxgraph": "RemoteFxGraphCache",
    "aotautograd": "RemoteAOTAutogradCache",
    "autotune": "RemoteAutotuneCache",
    "bundled-autotune": "RemoteBundledAutotuneCache",
    "pgo": "RemoteDynamoPGOCache",
}


def remote_cache_class(kind: str) -> Any:
    module = importlib.import_module("torch._inductor.remote_cache")
    cls = getattr(module, REMOTE_CACHE_CLASSES[kind], None)
    if cls is None or not hasattr(cls, "backend_override_cls"):
        raise TorchHookMissing(
            f"torch {torch_version()} has no {REMOTE_CACHE_CLASSES[kind]}.backend_override_cls; "
            "this release of pt2-cache-coordinator does not support it"
        )
    return cls


def guarded_cache_class() -> Any:
    """The mixin whose `iterate_over_candidates` offers every local entry to guard evaluation."""
    codecache = importlib.import_module("torch._inductor.codecache")
    cls = getattr(codecache, "GuardedCache", None)
    if cls is None or not hasattr(cls, "iterate_over_candidates"):
        raise TorchHookMissing(
            f"torch {torch_version()} has no GuardedCache.iterate_over_candidates"
        )
    return cls


def store_backend_base() -> type:
    """The base class of a remote cache's byte-moving backend (`_get` / `_put`)."""
    from torch._inductor.remote_cache import RemoteCacheBackend

    return RemoteCacheBackend


def set_backend_override(kind: str, factory: Callable[[], Any]) -> Callable[[], None]:
    """Make the remote cache of `kind` build its backend with `factory`; returns the undo."""
    cls = remote_cache_class(kind)
    previous = cls.__dict__.get("backend_override_cls")
    cls.backend_override_cls = factory

    def undo() -> None:
        if previous is not None:
            cls.backend_override_cls = previous
        elif "backend_override_cls" in cls.__dict__:
            del cls.backend_override_cls  # back to the base class's None

    return undo


Candidates = Iterator[Any]


def wrap_candidates(
    wrapper: Callable[[Callable[[], Candidates], type, bool, Any, str], Candidates],
) -> Callable[[], None]:
    """Wrap `GuardedCache.iterate_over_candidates(cls, local, remote_cache, key)`, the
    generator whose candidates PyTorch evaluates guards on: `wrapper(original, cls, local,
    remote_cache, key)` yields them, `original()` being PyTorch's own. Returns the undo."""
    guarded = guarded_cache_class()
    original = guarded.__dict__["iterate_over_candidates"]

    def iterate_over_candidates(cls: type, local: bool, remote_cache: Any,
                                key: str) -> Candidates:
        def pytorchs() -> Candidates:
            return original.__func__(cls, local, remote_cache, key)

        return wrapper(pytorchs, cls, local, remote_cache, key)

    guarded.iterate_over_candidates = classmethod(iterate_over_candidates)
    return lambda: setattr(guarded, "iterate_over_candidates", original)


def local_dir_for_key(cls: type, key: str) -> str:
    """The directory of a guarded cache (FxGraphCache, AOTAutogradCache) that holds `key`'s
    local entries."""
    return cls._get_tmp_dir_for_key(key)  # type: ignore[attr-defined]


def forget_remote_caches() -> None:
    """Drop the remote cache AOTAutograd memoises per process (`functools.cache`): one
    built before `install` (None while remote caching was off) or by an earlier install
    would send its lookups and publishes past ours, or to a store no longer installed."""
    aot = importlib.import_module("torch._functorch._aot_autograd.autograd_cache")
    clear = getattr(getattr(aot.AOTAutogradCache, "get_remote_cache", None), "cache_clear", None)
    if clear is not None:
        clear()


def guarded_kind(cls: type) -> str | None:
    """Our kind for a GuardedCache subclass (FxGraphCache, AOTAutogradCache)."""
    return {"FxGraphCache": "fxgraph", "AOTAutogradCache": "aotautograd"}.get(cls.__name__)


def remote_key(remote_cache: Any, key: str) -> str:
    """The key a RemoteCache hands its backend for `key` (it adds a cache-id prefix)."""
    to_remote = getattr(remote_cache, "_get_key", None)
    return to_remote(key) if to_remote is not None else key


def local_entry_name(content: bytes) -> str:
    """The file name PyTorch gives a local guarded-cache entry, so ours never duplicate its own."""
    codecache = importlib.import_module("torch._inductor.codecache")
    namer: Callable[[bytes], str] | None = getattr(codecache, "sha256_hash", None)
    if namer is not None:
        return namer(content)
    return hashlib.sha256(content).hexdigest()


def entry_content(value: bytes) -> bytes:
    """The pickled entry inside a guarded cache's remote value (JSON with base64 "data"),
    as PyTorch writes it to its local dir. Raises ValueError for anything else."""
    try:
        return base64.b64decode(json.loads(value)["data"])
    except (KeyError, TypeError, binascii.Error) as exc:
        raise ValueError(f"not a guarded cache entry: {exc}") from None


def has_guards(candidate: Any) -> bool:
    """Whether a candidate of `iterate_over_candidates` ((entry, content, local) tuples)
    is specialised by guards."""
    entry = candidate[0] if isinstance(candidate, tuple) else candidate
    return bool(getattr(entry, "guards_expr", None))


def entry_guards(content: bytes) -> str | None:
    """The guard expression of a pickled guarded cache entry; None if it has none or
    cannot be read. Only for entries from our verified store, which PyTorch unpickles
    on lookup anyway."""
    try:
        return getattr(pickle.loads(content), "guards_expr", None) or None
    except Exception:  # noqa: BLE001 - an unreadable entry only misses a dedup
        return None


def inductor_cache_dir() -> str:
    """Inductor's cache dir as `cache_dir_utils.cache_dir()` finds it: TORCHINDUCTOR_CACHE_DIR,
    else the default. Worked out here, not asked of Inductor: importing any part of
    `torch._inductor` imports Dynamo too (a second), which install() does only once the
    snapshot's prefetch has started (tests compare the two)."""
    return os.path.abspath(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or _default_cache_dir())


def precompiled_header_dir() -> str:
    """Where Inductor keeps precompiled C++ headers: under the *default* cache dir
    (`codecache._HEADER_DIR`)."""
    return os.path.join(_default_cache_dir(), "precompiled_headers")


def _default_cache_dir() -> str:
    """`cache_dir_utils.default_cache_dir()`: <tmp>/torchinductor_<user>."""
    try:
        user = getpass.getuser()
    except (KeyError, ModuleNotFoundError, OSError):
        user = f"uid_{os.getuid()}"
    user = re.sub(r'[\\/:*?"<>|]', "_", user)
    return os.path.join(tempfile.gettempdir(), f"torchinductor_{user}")


def triton_cache_root() -> str:
    """Triton's cache as Inductor points it: TRITON_CACHE_DIR, else under the cache dir."""
    return os.environ.get("TRITON_CACHE_DIR") or os.path.join(inductor_cache_dir(), "triton")


def start_compile_workers() -> None:
    """Start Inductor's Triton compile workers now, as its first compile would (a no-op
    without Triton, or where PyTorch's own switches keep them off).

    Their sidecar takes seconds to import torch and fork its workers, and a kernel reached
    before they are ready compiles serially on the compile thread.
    """
    from torch._inductor import async_compile

    warm = getattr(async_compile, "maybe_warm_pool", None)
    if warm is None:  # a release without it starts them at the first compile
        return
    try:
        warm()
    except Exception as exc:  # noqa: BLE001 - Inductor tries again at the first compile
        log.warning("Inductor's compile workers did not start (%s); the first compile "
                    "starts them", exc)


def register_compile_callbacks(on_start: Callable[[Any], None],
                               on_end: Callable[[Any], None]) -> Callable[[], None]:
    """Dynamo's compile start and end callbacks (they also fire for lazy backward
    compiles); returns the function that removes both.

    `torch._dynamo.reset()` clears every callback, and user code calls it between
    compiles: ours are registered again right after each clear, or a claim would outlive
    the compile that made it.
    """
    from torch._dynamo.callback import callback_handler

    clear = callback_handler.clear

    def register() -> None:
        callback_handler.register_start_callback(on_start)
        callback_handler.register_end_callback(on_end)

    def clear_then_register() -> None:
        clear()
        register()

    register()
    callback_handler.clear = clear_then_register

    def remove() -> None:
        if callback_handler.__dict__.get("clear") is clear_then_register:
            del callback_handler.clear
        with contextlib.suppress(ValueError):
            callback_handler.remove_start_callback(on_start)
        with contextlib.suppress(ValueError):
            callback_handler.remove_end_callback(on_end)

    return remove


def enable_caches() -> dict[tuple[str, str], Any]:
    """Switch on the local and remote caches we hook; returns the previous values."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    wanted: list[tuple[Any, str, Any]] = [
        (inductor_config, "fx_graph_cache", True),
        (inductor_config, "fx_graph_remote_cache", True),
        (inductor_config, "autotune_local_cache", True),
        (inductor_config, "autotune_remote_cache", True),
        # Trips an assertion in AutotuneCacheBundler under DDP's graph splitting (torch 2.11).
        (inductor_config, "bundled_autotune_remote_cache", False),
        (functorch_config, "enable_autograd_cache", True),
        (functorch_config, "enable_remote_autograd_cache", True),
    ]
    # Where a release writes remote entries from a thread pool, a claim could be released
    # before its entry lands; waiters must find the entry when they are let in.
    if hasattr(inductor_config, "non_blocking_remote_cache_write"):
        wanted.append((inductor_config, "non_blocking_remote_cache_write", False))
    previous = {}
    for module, name, value in wanted:
        if not hasattr(module, name):
            raise TorchHookMissing(
                f"torch {torch_version()} has no config {module.__name__}.{name}"
            )
        previous[(module.__name__, name)] = getattr(module, name)
        setattr(module, name, value)
    return previous


def disable_ddp_graph_split() -> dict[tuple[str, str], Any]:
    """Compile DDP models whole: DDPOptimizer's per-bucket submodules set
    `fakify_first_call`, for which AOTAutograd bypasses its cache."""
    import torch._dynamo.config as dynamo_config

    previous = {(dynamo_config.__name__, "optimize_ddp"): dynamo_config.optimize_ddp}
    dynamo_config.optimize_ddp = False
    return previous


def restore_configs(previous: dict[tuple[str, str], Any]) -> None:
    for (module_name, name), value in previous.items():
        setattr(importlib.import_module(module_name), name, value)


def cpu_capability() -> str:
    """ATen's CPU dispatch level (AVX512, AVX2, ...): what a CPU kernel may rely on.

    Inductor's own probe (`pick_vec_isa`) compiles test programs on a fresh machine, seconds
    of g++ before the snapshot that carries their results could be placed: not here.
    """
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001 - a missing probe only widens the fingerprint's doubt
        return "unknown"


def _dynamo_imported() -> bool:
    """Whether Dynamo is imported: before it is, this process has compiled nothing."""
    return "torch._dynamo.utils" in sys.modules


def cache_counters() -> dict[str, int]:
    """PyTorch's own FX-graph and AOTAutograd cache counters for this process."""
    counters: dict = {}
    if _dynamo_imported():  # read without importing it: install() imports it later
        from torch._dynamo.utils import counters
    groups = {"fxgraph": "inductor", "autograd": "aot_autograd"}
    return {f"{kind}_cache_{n}": counters.get(group, {}).get(f"{kind}_cache_{n}", 0)
            for kind, group in groups.items() for n in ("miss", "hit", "bypass")}


def compile_time_metrics() -> dict[str, float]:
    """Seconds per phase that Dynamo's `dynamo_timed` recorded in this process (summed)."""
    if not _dynamo_imported():
        return {}
    from torch._dynamo.utils import compilation_time_metrics

    return {name: round(sum(times), 4) for name, times in sorted(compilation_time_metrics.items())}


def torch_version() -> str:
    import torch

    return torch.__version__


def isa_probes_import_torch() -> bool:
    """Whether each of Inductor's vector-ISA probes loads its library in a child Python that
    imports torch (before 2.13: seconds per ISA in every new process, which no cache dir
    spares; 2.13 loads it with torch's lib dir on the loader path instead)."""
    from torch._inductor.cpu_vec_isa import VecISA

    return not hasattr(VecISA, "_build_probe_env")


def cpp_kernel_suffixes() -> tuple[str, ...]:
    """Files Inductor's C++ code cache loads instead of building when they exist."""
    return (".so",) if os.name != "nt" else (".pyd", ".dll")


def watch_precompiled_headers(on_header: Callable[[str], None]) -> Callable[[], None]:
    """Call `on_header` with each precompiled header Inductor uses, built or found
    (`codecache._precompile_header`, which returns the header beside its build). Missing:
    not watched (snapshots then carry only headers built since the job started, or
    received). Returns the undo."""
    codecache = importlib.import_module("torch._inductor.codecache")
    precompile = getattr(codecache, "_precompile_header", None)
    if not callable(precompile):
        log.debug("torch %s: no codecache._precompile_header to watch", torch_version())
        return lambda: None

    def _precompile_header(*args: Any, **kwargs: Any) -> str:
        header = precompile(*args, **kwargs)
        on_header(header)
        return header

    codecache._precompile_header = _precompile_header
    return lambda: setattr(codecache, "_precompile_header", precompile)


# Key components: PyTorch hashes each attribute of its cache-key details on its own and
# prints "[<hash>] <name>: <value>" per attribute (FxGraphCachePickler.debug_lines).
KeyComponents = dict[str, list[str]]  # name -> [hash, value cut to COMPONENT_VALUE_CHARS]
COMPONENT_VALUE_CHARS = 600


def capture_key_components(record: Callable[[str, str, KeyComponents], None],
                           wants_lines: Callable[[str, str], bool]) -> Callable[[], None]:
    """Hand every FX-graph and AOTAutograd cache key PyTorch computes, with its components,
    to `record(kind, local_key, components)`; returns the undo.

    FX keys come with their lines anyway. AOTAutograd computes its lines only under DEBUG
    logging (they re-hash every attribute once more: 70 ms for a two-layer model on CPU);
    while this hook is on it computes them where `wants_lines(kind, key)` says so (a key
    the store does not hold: it will miss, be explained and published).
    """
    codecache = importlib.import_module("torch._inductor.codecache")
    aot = importlib.import_module("torch._functorch._aot_autograd.autograd_cache")
    undo: list[Callable[[], None]] = []

    def wrap(module: Any, name: str, kind: str) -> None:
        original = getattr(module, name, None)
        if original is None:
            raise TorchHookMissing(f"torch {torch_version()} has no {module.__name__}.{name}")

        def computed(*args: Any, **kwargs: Any) -> Any:
            key, lines = original(*args, **kwargs)
            if lines:
                with contextlib.suppress(Exception):  # explanations never break a compile
                    record(kind, key, parse_key_lines(lines))
            return key, lines

        setattr(module, name, computed)
        undo.append(lambda: setattr(module, name, original))

    wrap(codecache, "compiled_fx_graph_hash", "fxgraph")
    wrap(aot, "autograd_cache_key", "aotautograd")
    lazy = getattr(aot, "_get_debug_lines_for_cache_key", None)
    if lazy is not None:  # newer releases: lines only under DEBUG

        def lines_if_wanted(pickler: Any, details: Any, key: str) -> list[str]:
            if aot.log.isEnabledFor(logging.DEBUG):
                return lazy(pickler, details, key)
            return pickler.debug_lines(details) if wants_lines("aotautograd", key) else []

        aot._get_debug_lines_for_cache_key = lines_if_wanted
        undo.append(lambda: setattr(aot, "_get_debug_lines_for_cache_key", lazy))

    def restore() -> None:
        for step in reversed(undo):
            step()

    return restore


def parse_key_lines(lines: list[str]) -> KeyComponents:
    """PyTorch's "[hash] name: value" lines as {name: [hash, value]}, values cut short."""
    out: KeyComponents = {}
    for line in lines:
        if not line.startswith("[") or "] " not in line:
            continue
        digest, rest = line[1:].split("] ", 1)
        name, _, value = rest.partition(": ")
        if len(value) > COMPONENT_VALUE_CHARS:
            value = value[:COMPONENT_VALUE_CHARS] + "…"
        out[name] = [digest, value]
    return out


def current_compile_id() -> str | None:
    """Dynamo's id of the compile running on this thread ("0/1"), if any."""
    from torch._guards import CompileContext

    with contextlib.suppress(Exception):
        compile_id = CompileContext.current_compile_id()
        return None if compile_id is None else str(compile_id)
    return None
