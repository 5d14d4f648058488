"""A bundle: what one stored object holds, PyTorch's value plus files it needs beside it.

PyTorch's entry for an FX graph carries Triton binaries but not the C++ kernel libraries
the CPU backend builds, so a graph loaded on a fresh node would rebuild every kernel. We
carry those files next to the entry, and `meta`, small plain data about them (a snapshot's
manifest). Format: magic, a JSON header of lengths and meta, the bytes. No pickle here:
the header is data, and the payload is verified by the store before use.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, NamedTuple

MAGIC = b"PT2CCE1\n"
CHUNK = 1 << 20


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
    reader = Reader(io.BytesIO(blob))
    files = {name: body.read() for name, body in reader.files()}
    reader.check_end()
    return Contents(reader.payload, files, reader.meta)


class Reader:
    """A bundle read from a stream in order, so that a large one (a snapshot) goes from its
    decompressor to its files a chunk at a time, never whole in memory.

    The header (`names`, `meta`) is read at once, `payload` on first use (a reader that
    wants the names alone decompresses nothing more); `files()` yields each file's name
    and its `Body`, valid until the next file (what is left unread is skipped);
    `check_end()` then says the stream held nothing more.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        if self._read(len(MAGIC)) != MAGIC:
            raise BundleError("not a pt2cc bundle")
        try:
            (hlen,) = struct.unpack(">I", self._read(4))
            header = json.loads(self._read(hlen))
            self._sizes = [(str(name), int(size)) for name, size in header["files"]]
            self.meta = header.get("meta", {})
            if not isinstance(self.meta, dict):
                raise TypeError("meta is not a mapping")
            self._payload: bytes | int = int(header["payload"])  # its size until read
        except (struct.error, ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"damaged bundle: {exc}") from None

    @property
    def payload(self) -> bytes:
        if isinstance(self._payload, int):
            self._payload = self._read(self._payload)
        return self._payload

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self._sizes]

    def files(self) -> Iterator[tuple[str, Body]]:
        self.payload  # noqa: B018 - read now: the stream holds it before the files
        for name, size in self._sizes:
            body = Body(self._read, size)
            yield name, body
            body.copy_to(None)

    def check_end(self) -> None:
        if self._stream.read(1):
            raise BundleError("bundle length mismatch")

    def _read(self, n: int) -> bytes:
        """Exactly n bytes (a decompressor's stream may return fewer per call)."""
        parts, left = [], n
        while left > 0:
            chunk = self._stream.read(min(left, CHUNK))
            if not chunk:
                raise BundleError("bundle length mismatch")
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)


class Body:
    """One file's bytes inside a bundle being read: read whole, or copied chunk by chunk."""

    def __init__(self, read_exact: Callable[[int], bytes], size: int) -> None:
        self._read_exact, self._left = read_exact, size

    @classmethod
    def of(cls, data: bytes) -> Body:
        return cls(io.BytesIO(data).read, len(data))

    def read(self) -> bytes:
        data = self._read_exact(self._left)
        self._left = 0
        return data

    def copy_to(self, sink: BinaryIO | None) -> None:
        """The rest of this file into `sink` (None: skipped), one chunk in memory at a time."""
        while self._left:
            chunk = self._read_exact(min(self._left, CHUNK))
            self._left -= len(chunk)
            if sink is not None:
                sink.write(chunk)
