"""Trust: with a signing key, objects not written with it are refused before any unpickling;
without one, a store others can write draws one warning; a leakable key file is refused."""

from __future__ import annotations

import base64
import json
import os
import pickle
import time
from pathlib import Path

import pytest

from coordinator import bundle
from storage import sealed
from tests.faults import common
from tests.faults.conftest import copy_store

KEY = "pt2cc-faults-test-key"


class _Plant:
    """Unpickling this object runs code: it creates `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (exec, (f"open({self.path!r}, 'w').close()",))


def _plant_object(marker: Path, signing_key: bytes | None) -> tuple[str, bytes]:
    """A store object in the exact format a remote FX-graph lookup hands PyTorch."""
    value = json.dumps({"data": base64.b64encode(pickle.dumps(_Plant(str(marker)))).decode()})
    payload = bundle.pack(value.encode())
    return sealed.digest_of(payload), sealed.encode(payload, signing_key)


def _payload_to_pickle(blob: bytes, digest: str) -> bytes:
    payload = bundle.unpack(sealed.decode(blob, digest, None)).payload
    return base64.b64decode(json.loads(payload)["data"])


def test_unsigned_store_writable_by_others_warns_once(seed: dict) -> None:
    warned = common.warnings(seed["job"], trust=True)
    assert [r for r, t in warned if "others can write" in t] == [0], warned
    assert "artifacts are pickles, code" in seed["job"].output
    common.assert_outputs_are_eager(seed["job"], second=True)


@pytest.mark.multiprocess
def test_planted_pickles_are_refused_never_unpickled(tmp_path: Path, seed: dict) -> None:
    store = copy_store(seed, tmp_path / "store")
    fx_dirs = sorted(store.glob("v1/*/index/fxgraph/*"))
    assert len(fx_dirs) == 2, fx_dirs  # the real keys of f and g, which the job looks up
    markers = [tmp_path / "pwned-unsigned", tmp_path / "pwned-other-key"]
    planted = []
    for key_dir, marker, signer in zip(fx_dirs, markers, [None, b"another key"], strict=True):
        digest, blob = _plant_object(marker, signer)
        # The plant is real: unpickling it does leave the file (then we remove it again).
        pickle.loads(_payload_to_pickle(blob, digest))
        assert marker.exists()
        marker.unlink()
        obj = key_dir.parents[2] / "objects" / digest[:2] / digest
        obj.parent.mkdir(parents=True, exist_ok=True)
        obj.write_bytes(blob)
        (key_dir / digest).write_bytes(digest.encode())
        future = time.time() + 60  # the newest variant: offered first
        os.utime(key_dir / digest, (future, future))
        planted.append(digest)

    job = common.run(tmp_path, "signed", str(store), ["--second"],
                     env={"PT2CC_SIGNING_KEY": KEY}, snapshot=True).check()
    assert not any(m.exists() for m in markers), "a refused object was unpickled"
    common.assert_outputs_are_eager(job, second=True)
    common.assert_no_wait_past_deadline(job)
    quarantined = {p.name.split(".")[0] for p in store.glob("v1/*/quarantine/*")}
    assert set(planted) <= quarantined
    assert "unsigned object refused" in job.output and "bad signature" in job.output
    assert sum(s["fxgraph_cache_miss"] for s in job.stats) == 2  # compiled instead
    assert not [t for _, t in common.warnings(job, trust=True) if "others can write" in t]
    # What this job published is signed with its key and verifies with it.
    mine = {d for kind, _, d in common.digests(str(store)) if kind == "fxgraph"} - set(planted)
    signed = [d for d in mine if list(store.glob(f"v1/*/objects/*/{d}"))
              and sealed.decode(next(store.glob(f"v1/*/objects/*/{d}")).read_bytes(), d,
                                 KEY.encode())]
    assert len(signed) >= 2, mine
