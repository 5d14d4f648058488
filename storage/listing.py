"""Listing helpers that read names, sizes and modification times from any fsspec backend."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import fsspec

from storage.retry import Retrier

_TIME_KEYS = ("mtime", "LastModified", "last_modified", "updated", "created")


def mtime_of(info: dict[str, Any]) -> float:
    """A POSIX timestamp from an fsspec info dict (each backend names the field differently)."""
    for k in _TIME_KEYS:
        v = info.get(k)
        if v is None:
            continue
        if isinstance(v, datetime):
            return v.timestamp()
        if isinstance(v, (int, float)):
            return float(v)
        if isinstance(v, str):
            try:
                return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return 0.0


@dataclass(frozen=True)
class FileInfo:
    """One file: its full path (no protocol), base name, size and mtime."""

    path: str
    name: str
    size: int
    mtime: float


def _info(path: str, info: dict[str, Any]) -> FileInfo:
    return FileInfo(path, path.rsplit("/", 1)[-1], int(info.get("size") or 0), mtime_of(info))


def _ls(fs: fsspec.AbstractFileSystem, path: str, retrier: Retrier) -> list[dict[str, Any]]:
    """What is directly under `path`, fresh from the backend; [] when it does not exist."""
    fs.invalidate_cache(path)
    try:
        return retrier.call("list", lambda: fs.ls(path, detail=True, refresh=True))
    except FileNotFoundError:
        return []


def list_files(fs: fsspec.AbstractFileSystem, path: str, retrier: Retrier) -> list[FileInfo]:
    """Files directly under `path`; [] when it does not exist."""
    return [_info(i["name"].rstrip("/"), i) for i in _ls(fs, path, retrier)
            if i.get("type") == "file"]


def list_dirs(fs: fsspec.AbstractFileSystem, path: str, retrier: Retrier) -> list[str]:
    """Names of the directories directly under `path`; [] when it does not exist."""
    return [i["name"].rstrip("/").rsplit("/", 1)[-1] for i in _ls(fs, path, retrier)
            if i.get("type") == "directory"]


def find_files(fs: fsspec.AbstractFileSystem, path: str, retrier: Retrier) -> list[FileInfo]:
    """Every file below `path` (one recursive listing: a paginated LIST on object stores)."""
    fs.invalidate_cache(path)
    try:
        found = retrier.call("walk", lambda: fs.find(path, detail=True))
    except FileNotFoundError:
        return []
    return [_info(p, i) for p, i in found.items() if i.get("type", "file") == "file"]
