"""A bundle: what one stored object holds, PyTorch's value plus files it needs beside it.

PyTorch's entry for an FX graph carries Triton binaries but not the C++ kernel libraries
the CPU backend builds, so a graph loaded on a fresh node would rebuild every kernel. We
carry those files next to the entry, and `meta`, small plain data about them (a snapshot's
manifest). Format: magic, a JSON header of lengths and meta, the bytes. No pickle here:
the header is data, and the payload is verified by the store before use.
"""

from __future__ import annotations

import json
import struct
from typing import Any, NamedTuple

MAGIC = b"PT2CCE1\n"


class BundleError(ValueError):
    """Bytes that are not a bundle of ours (a foreign or damaged object)."""


class Contents(NamedTuple):
    payload: bytes
    files: dict[str, bytes]
    meta: dict[str, Any]


def pack(payload: bytes, files: dict[str, bytes] | None = None,
         meta: dict[str, Any] | None = None) -> bytes:
    files = files or {}
    fields: dict[str, Any] = {
        "payload": len(payload), "files": [[name, len(data)] for name, data in files.items()]}
    if meta:
        fields["meta"] = meta
    header = json.dumps(fields).encode()
    return b"".join([MAGIC, struct.pack(">I", len(header)), header, payload, *files.values()])


def unpack(blob: bytes) -> Contents:
    if not blob.startswith(MAGIC):
        raise BundleError("not a pt2cc bundle")
    try:
        (hlen,) = struct.unpack_from(">I", blob, len(MAGIC))
        start = len(MAGIC) + 4
        header = json.loads(blob[start : start + hlen])
        pos = start + hlen
        payload = blob[pos : pos + header["payload"]]
        pos += header["payload"]
        files = {}
        for name, size in header["files"]:
            files[name] = blob[pos : pos + size]
            pos += size
        meta = header.get("meta", {})
        if not isinstance(meta, dict):
            raise TypeError("meta is not a mapping")
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"damaged bundle: {exc}") from None
    if pos != len(blob) or len(payload) != header["payload"]:
        raise BundleError("bundle length mismatch")
    return Contents(payload, files, meta)
