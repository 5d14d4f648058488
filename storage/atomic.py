"""One local file written whole or not at all: temp file in the same dir, then os.replace."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import BinaryIO


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A file to write into; readers see the old file, the new one, or none, never a
    partial one. What the block writes appears at `path` only if the block succeeds.

    Dot-prefixed temp names: PyTorch's cache readers and our listings skip them.
    """
    directory = os.path.dirname(os.fspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_file(path: str | os.PathLike[str], data: bytes) -> None:
    """`data` at `path`, atomically (see `atomic_writer`)."""
    with atomic_writer(path) as f:
        f.write(data)
