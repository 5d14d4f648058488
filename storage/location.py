"""Turning a store URL into an fsspec filesystem and root path, with one clear error per bad input.

This is the one place that knows anything about particular protocols (which extra to
install, whether a root is a bucket); everything else speaks plain fsspec.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
from typing import Any

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from fsspec.registry import known_implementations, registry

from storage.atomic import write_file
from storage.errors import StoreConfigError, StoreUnavailable
from storage.retry import Retrier

log = logging.getLogger(__name__)

_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")
_LOOKS_LIKE_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/?[^/]")
# protocol -> extra of this distribution that brings its fsspec backend.
_EXTRAS = {"s3": "s3", "s3a": "s3"}


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """Local filesystems get temp-file + os.replace writes and are created on open."""
    return isinstance(fs, LocalFileSystem)


def _check_syntax(url: str) -> str | None:
    """Return the URL's protocol (None for a plain path), or raise on a malformed URL."""
    if not url or url != url.strip() or any(c in url for c in "\n\r\t\0"):
        raise StoreConfigError(
            f"malformed store URL {url!r}: empty or contains whitespace/control characters; "
            "pass a path or a URL like s3://bucket/prefix"
        )
    head = url.split("::")[-1]  # fsspec chained URLs: the last element names the target
    if "://" not in head:
        m = _LOOKS_LIKE_SCHEME.match(head)
        if m and not os.path.exists(head):
            raise StoreConfigError(
                f"malformed store URL {url!r}: did you mean {m.group(1)}://...? "
                "(a protocol is followed by '://')"
            )
        return None
    scheme, rest = head.split("://", 1)
    if not _SCHEME_RE.match(scheme):
        raise StoreConfigError(
            f"malformed store URL {url!r}: {scheme!r} is not a valid protocol name; "
            "use e.g. s3://bucket/prefix or a local path"
        )
    if scheme not in ("file", "local", "memory") and not rest.strip("/"):
        raise StoreConfigError(
            f"malformed store URL {url!r}: no bucket or host after '{scheme}://'; "
            f"use {scheme}://bucket/prefix"
        )
    return scheme


def _missing_backend(protocol: str, err: Exception) -> StoreConfigError:
    extra = _EXTRAS.get(protocol)
    if extra:
        return StoreConfigError(
            f"protocol '{protocol}://' needs an optional dependency that is not installed ({err}); "
            f"run `pip install pt2-cache-coordinator[{extra}]`"
        )
    return StoreConfigError(
        f"protocol '{protocol}://' needs a package that is not installed: {err}"
    )


def _unknown_protocol(url: str, protocol: str | None) -> StoreConfigError:
    known = ", ".join(sorted(p for p in fsspec.available_protocols() if len(p) > 1)[:20])
    return StoreConfigError(
        f"unknown protocol in store URL {url!r}: {protocol!r} is not an fsspec protocol "
        f"(known include: {known}, ...)"
    )


def check(url: str) -> None:
    """The checks of `resolve` that need neither the network nor the backend's import:
    the URL's form, every protocol it names known and its package installed, a local
    root usable. What only the store can tell (a missing bucket, refused credentials)
    waits for `resolve`."""
    protocol = _check_syntax(url)
    for part in url.split("::"):
        if "://" in part:
            _check_backend(url, part.split("://", 1)[0])
    if protocol in (None, "file", "local") and "::" not in url:
        _prepare_local(url, url_to_fs(url)[1])


def _remote_protocols(url: str) -> list[str]:
    protocols = (part.split("://", 1)[0] for part in url.split("::") if "://" in part)
    return [p for p in protocols if p not in ("file", "local")]


def backend_packages(url: str) -> list[str]:
    """The packages of the fsspec backends `url` names that are not imported yet."""
    return [_package(known_implementations[p]) for p in _remote_protocols(url)
            if p not in registry and p in known_implementations]


def import_backends(url: str) -> None:
    """Import the fsspec backend of each protocol `url` names, as `resolve` would: a caller
    can then scope the import (`storage.bytecode`). Errors are left for `resolve`."""
    for protocol in _remote_protocols(url):
        with contextlib.suppress(ImportError, ValueError):
            fsspec.get_filesystem_class(protocol)


def _package(implementation: dict[str, str]) -> str:
    return re.split(r"[.:]", implementation["class"], maxsplit=1)[0]


def _check_backend(url: str, protocol: str) -> None:
    if protocol in registry:
        return
    implementation = known_implementations.get(protocol)
    if implementation is None:
        raise _unknown_protocol(url, protocol)
    package = _package(implementation)
    if importlib.util.find_spec(package) is None:
        raise _missing_backend(protocol, ModuleNotFoundError(f"No module named {package!r}"))


def _credentials_problem(err: BaseException) -> bool:
    names = {c.__name__ for c in type(err).__mro__}
    return "NoCredentialsError" in names or "Unable to locate credentials" in str(err)


def resolve(url: str, storage_options: dict[str, Any] | None = None,
            retrier: Retrier | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return (filesystem, root path) for `url`, checking that the root is usable.

    Local roots are created (so a plain directory works with no setup); bucket-style roots
    must already exist, because creating buckets is the operator's decision, not ours.
    """
    protocol = _check_syntax(url)
    try:
        fs, root = url_to_fs(url, **(storage_options or {}))
    except ImportError as e:
        raise _missing_backend(protocol or "file", e) from e
    except ValueError as e:
        if "Protocol not known" in str(e):
            raise _unknown_protocol(url, protocol) from e
        raise StoreConfigError(f"malformed store URL {url!r}: {e}") from e
    except TypeError as e:
        raise StoreConfigError(f"bad storage_options for {url!r}: {e}") from e
    root = root.rstrip("/") or root
    retrier = retrier or Retrier(url)
    if is_local(fs):
        _prepare_local(url, root)
    else:
        _check_remote(url, fs, root, retrier)
    return fs, root


def _prepare_local(url: str, root: str) -> None:
    if os.path.isfile(root):
        raise StoreConfigError(
            f"store path {root} is a file, not a directory; "
            "pass a directory (it is created if missing)"
        )
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as e:
        raise StoreConfigError(f"cannot create store directory {root} for {url!r}: {e}") from e


def _check_remote(url: str, fs: fsspec.AbstractFileSystem, root: str, retrier: Retrier) -> None:
    bucket = "" if root.startswith("/") else root.split("/", 1)[0]
    try:
        # A listing, not exists(): s3fs's exists() hides missing credentials as False. It
        # also tells an object from a prefix (fsspec lists an object as itself), so one
        # request checks the root: on a warm start it is on every rank's path to main().
        listed = retrier.call("list root", lambda: fs.ls(root, detail=True, refresh=True))
    except FileNotFoundError as e:
        text = str(e).lower()
        if bucket and (root == bucket or "nosuchbucket" in text or "bucket does not exist" in text):
            raise StoreConfigError(
                f"bucket {bucket!r} of store URL {url!r} does not exist; create it "
                f"(e.g. `aws s3 mb s3://{bucket}`) or fix the URL"
            ) from e
        return  # an empty prefix: the store is new
    except StoreUnavailable as e:
        cause = e.__cause__
        if cause is not None and _credentials_problem(cause):
            raise _no_credentials(url) from cause
        if isinstance(cause, PermissionError):
            raise StoreConfigError(
                f"access to store URL {url!r} denied ({cause}); check the credentials and "
                "the bucket policy"
            ) from cause
        raise
    if root != bucket and any(e.get("type") == "file" and e["name"].rstrip("/") == root
                              for e in listed):
        raise StoreConfigError(
            f"store URL {url!r} names a file/object, not a directory or prefix; "
            "pass the prefix under which the store lives"
        )


def _no_credentials(url: str) -> StoreConfigError:
    return StoreConfigError(
        f"no credentials found for store URL {url!r}; set AWS_ACCESS_KEY_ID/"
        "AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or pass storage_options={'anon': True} "
        "for a public bucket"
    )


def write_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write so that a reader sees the old file, the new one, or nothing; never a partial one.

    Local filesystems: temp file in the same directory + os.replace. Object stores: one PUT
    (objects appear whole or not at all).
    """
    if not is_local(fs):
        fs.pipe_file(path, data)
        return
    write_file(path, data)


def read_json(fs: fsspec.AbstractFileSystem, path: str, retrier: Retrier) -> Any:
    """A small JSON note of the store; None if it is missing or malformed (notes only
    inform: explanations, environments, records of use)."""
    try:
        return json.loads(retrier.call("read", lambda: fs.cat_file(path)))
    except FileNotFoundError:
        return None
    except ValueError:
        log.debug("ignoring malformed %s", path)
        return None


def move(fs: fsspec.AbstractFileSystem, src: str, dst: str) -> None:
    """Move one file (atomic rename locally; copy + delete on object stores)."""
    if is_local(fs):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.replace(src, dst)
    else:
        fs.mv(src, dst)
