"""One local file written whole or not at all: temp file in the same dir, then os.replace."""

from __future__ import annotations

import contextlib
import os
import tempfile


def write_file(path: str | os.PathLike[str], data: bytes) -> None:
    """Readers see the old file, the new one, or none; never a partial one.

    Dot-prefixed temp names: PyTorch's cache readers and our listings skip them.
    """
    directory = os.path.dirname(os.fspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
