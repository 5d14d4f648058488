"""Why a cache key missed: compare its components with the nearest stored key's.

A key's components are PyTorch's own cache-key material, one hash per part (graph code,
each input's metadata, each Inductor / functorch config entry, versions, system), kept
beside each published entry as plain JSON. Plain data only: the CLI explains a miss on a
machine without torch, and the coordinator explains its own at run time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

Components = Mapping[str, list[str]]  # component name -> [hash, short value]

NEW_GRAPH = "new graph"
# Parts of PyTorch's key details, by attribute name, in the words a user thinks in.
_GROUPS = (
    ("gm", "graph code"),
    ("example_inputs", "input"),
    ("inputs_to_check", "inputs to check"),
    ("inductor_config", "Inductor config"),
    ("autograd_config", "functorch config"),
    ("aot_config", "AOT config"),
    ("torch_version", "torch version"),
    ("system_info", "system"),
)


def label(name: str) -> str:
    """'inductor_config[max_autotune]' -> 'Inductor config max_autotune', 'gm' -> 'graph code'."""
    attr, _, rest = name.partition("[")
    sub = rest.rstrip("]")
    for prefix, words in _GROUPS:
        if attr == prefix:
            return f"{words} {sub}" if sub else words
    return name


def differences(ours: Components, stored: Components) -> list[str]:
    """Names of the components whose hashes differ, or that only one side has."""
    names = sorted(set(ours) | set(stored))
    return [n for n in names if (ours.get(n) or [None])[0] != (stored.get(n) or [None])[0]]


def nearest(ours: Components, candidates: Iterable[tuple[str, Components]]) \
        -> tuple[str, list[str]] | None:
    """The candidate key with the fewest differing components, and those components."""
    best: tuple[str, list[str]] | None = None
    for key, stored in candidates:
        diff = differences(ours, stored)
        if best is None or len(diff) < len(best[1]):
            best = (key, diff)
    return best


def describe(diff: list[str], ours: Components, stored: Components,
             limit: int = 4) -> tuple[str, str]:
    """(what misses are counted by, the reason in full) for a miss whose nearest stored key
    differs in `diff`: ('differs in: Inductor config', 'nearest stored entry differs in:
    Inductor config max_autotune (False -> True)')."""
    if not diff:
        return ("differs in: a part PyTorch does not itemise",
                "nearest stored entry has the same components; the key differs in a part "
                "PyTorch does not itemise")
    parts, groups = [], []
    for name in diff:
        group = _group(name)
        if group not in groups:
            groups.append(group)
        if len(parts) < limit:
            before = (stored.get(name) or ["", "(absent)"])[1]
            after = (ours.get(name) or ["", "(absent)"])[1]
            parts.append(f"{label(name)}{_change(before, after) if name != 'gm' else ''}")
    more = f" and {len(diff) - limit} more" if len(diff) > limit else ""
    return (f"differs in: {', '.join(groups)}",
            f"nearest stored entry differs in: {', '.join(parts)}{more}")


def _change(before: str, after: str) -> str:
    """' (False -> True)' for short values; for records such as TensorMetadata(dtype=...,
    shape=...), only the fields that differ: ' (dtype=torch.float32 -> torch.float64)'."""
    if len(before) <= 40 and len(after) <= 40:
        return f" ({before} -> {after})"
    old, new = _record_fields(before), _record_fields(after)
    if old is None or new is None:
        return ""
    changed = [f"{k}={old.get(k, '?')} -> {new.get(k, '?')}" for k in new if old.get(k) != new[k]]
    return f" ({', '.join(changed)})" if changed else ""


def _record_fields(text: str) -> dict[str, str] | None:
    """'Name(a=1, b=(2, 3))' -> {'a': '1', 'b': '(2, 3)'}; None for anything else."""
    if "(" not in text or not text.endswith(")"):
        return None
    body, fields, depth, start = text[text.index("(") + 1:-1], {}, 0, 0
    for i, ch in enumerate(body + ","):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            name, eq, value = body[start:i].strip().partition("=")
            if eq:
                fields[name] = value
            start = i + 1
    return fields or None


def _group(name: str) -> str:
    attr = name.partition("[")[0]
    return next((words for prefix, words in _GROUPS if attr == prefix), name)


def environment_differences(ours: Mapping[str, str], stored: Mapping[str, str]) -> list[str]:
    """'torch 2.11.0 -> 2.13.0' for each field of two fingerprints' descriptions that differs."""
    return [f"{name} {stored.get(name, '?')} -> {ours.get(name, '?')}"
            for name in sorted(set(ours) | set(stored)) if ours.get(name) != stored.get(name)]


def environment_text(fields: Mapping[str, str]) -> str:
    """'torch 2.11.0+cu130, Triton 3.6.0, CUDA 13.0, NVIDIA H100 80GB HBM3 (sm 9.0)'."""
    gpu = fields.get("gpu", "none")
    device = (f"{gpu} (sm {fields.get('capability', '?')})" if gpu != "none"
              else f"CPU {fields.get('cpu', '?')}")
    return (f"torch {fields.get('torch', '?')}, Triton {fields.get('triton', '?')}, "
            f"CUDA {fields.get('cuda', '?')}, {device}")
