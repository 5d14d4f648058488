"""Fixtures of the CUDA tests: an S3 store for a whole module (moto's server, tests/conftest.py)."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture(scope="module")
def s3_store(request: pytest.FixtureRequest) -> tuple[str | None, str]:
    """(s3:// URL in a fresh bucket, "") or (None, why not): the local-store tests still run.

    The session fixture `s3_endpoint` starts moto's server on 127.0.0.1 and exports the
    AWS variables, which the jobs inherit and reach it through, as they would reach S3.
    """
    try:
        endpoint = request.getfixturevalue("s3_endpoint")
    except pytest.skip.Exception as exc:
        return None, f"no S3 server: {exc}"
    import s3fs

    name = f"cuda-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}).mkdir(name)
    return f"s3://{name}/cache", ""
