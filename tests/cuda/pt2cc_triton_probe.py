"""A Triton cache manager that logs what Triton compiles: `TRITON_CACHE_MANAGER=` this.

`triton.compile` asks its cache manager for a kernel's metadata group first; on a miss it
compiles and ends with exactly one `put_group`. So a `put_group` is a kernel compiled by
this process, and a group found is a kernel served by the Triton cache (which is where a
loaded FX graph's bundled kernels land). Inductor's compile workers inherit the variable
and RANK, so kernels compiled in them are counted for their rank too. `.so` files put
outside a kernel compile are Triton's launcher stubs, built with the host C compiler.

One log file per process: `$PT2CC_TEST_PROBE_DIR/triton.<pid>.log`, lines
`<event> <rank> <cache key>/<file>`.
"""

from __future__ import annotations

import os

from triton.runtime.cache import FileCacheManager


def _note(event: str, key: str, filename: str) -> None:
    directory = os.environ.get("PT2CC_TEST_PROBE_DIR")
    if not directory:
        return
    os.makedirs(directory, exist_ok=True)
    rank = os.environ.get("RANK", "-1")
    with open(os.path.join(directory, f"triton.{os.getpid()}.log"), "a") as f:
        f.write(f"{event} {rank} {key}/{filename}\n")


class CountingCacheManager(FileCacheManager):
    def get_group(self, filename: str):
        group = super().get_group(filename)
        if group is not None and filename in group:
            _note("hit", self.key, filename)
        return group

    def put_group(self, filename: str, group: dict[str, str]) -> str:
        _note("compile", self.key, filename)
        return super().put_group(filename, group)

    def put(self, data, filename: str, binary: bool = True) -> str:
        if filename.endswith(".so"):
            _note("build", self.key, filename)
        return super().put(data, filename, binary)
