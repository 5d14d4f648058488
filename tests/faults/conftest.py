"""Fixtures of the fault suite: a seed store written by one real job, S3 behind a fault proxy."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults import common
from tests.faults.s3proxy import FaultProxy


@pytest.fixture(scope="session")
def seed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A cold job (f and g, snapshot on) on a local store that others can write (mode 0o777).

    Later scenarios damage or plant objects in copies of this store; the job itself is the
    scenario "unsigned store writable by others": rank 0 warns once that artifacts are code.
    """
    tmp = tmp_path_factory.mktemp("seed")
    store = tmp / "store"
    store.mkdir()
    store.chmod(0o777)
    job = common.run(tmp, "seed", str(store), ["--second"], snapshot=True).check()
    return {"job": job, "store": store, "tmp": tmp}


def copy_store(seed: dict, dest: Path) -> Path:
    shutil.copytree(seed["store"], dest)
    dest.chmod(0o755)
    return dest


@pytest.fixture
def proxy_factory(s3_endpoint: str) -> Iterator:
    """Start FaultProxy instances in front of the session's moto server; stops them after."""
    started: list[FaultProxy] = []

    def make(**faults: object) -> FaultProxy:
        proxy = FaultProxy(s3_endpoint, **faults)
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        with contextlib.suppress(OSError):
            proxy.stop()
