"""Bytecode for the store's backend, kept on the node where the interpreter writes none.

An image that runs Python with PYTHONDONTWRITEBYTECODE and installs packages without their
bytecode (`pip install --no-compile`) makes every process compile what it imports from
source. For s3fs and its AWS stack (aiobotocore, botocore, aiohttp) that is 1.3-1.6 s per
rank per job on the GPU machines, a cost PyTorch alone never pays. While the backend is
imported, Python keeps its bytecode under a directory of ours (PEP 3147's prefix, what
PYTHONPYCACHEPREFIX sets); outside that import the interpreter's own setting holds, and
torch's modules, the script's and the user's are left as the image chose.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import threading
from collections.abc import Iterable, Iterator

_lock = threading.RLock()


@contextlib.contextmanager
def kept_under(directory: str | os.PathLike[str] | None,
               packages: Iterable[str]) -> Iterator[None]:
    """Within the block, modules imported are compiled once per node into `directory`,
    where one of `packages` was installed without bytecode beside its sources.

    A no-op where the interpreter writes bytecode, has a prefix of its own, or the packages
    come with theirs (redirected, Python would compile them once more on each fresh node).
    The setting is the process's: keep the block to the import itself.
    """
    with _lock:
        if directory is None or not sys.dont_write_bytecode or sys.pycache_prefix is not None \
                or not any(map(_lacks_bytecode, packages)):
            yield
            return
        sys.pycache_prefix, sys.dont_write_bytecode = os.path.abspath(directory), False
        try:
            yield
        finally:
            sys.pycache_prefix, sys.dont_write_bytecode = None, True


def _lacks_bytecode(package: str) -> bool:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return False
    origin = spec.origin if spec is not None else None
    if not origin or not origin.endswith(".py"):
        return False
    return not os.path.exists(importlib.util.cache_from_source(origin))
