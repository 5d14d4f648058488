"""The node's first look at a remote store, in a process of its own (a real child process
against moto's S3 server)."""

import logging
import time

import pytest

from storage import prepare_store
from storage.warmup import Gone, Warmup

FP = "fp"
pytestmark = pytest.mark.s3


def start(url: str, node: str) -> Warmup:
    warmup = Warmup.start(url, node, 2**30, timeout_s=5)
    assert warmup is not None
    return warmup


def test_it_lists_the_index_and_leaves_the_snapshot_in_the_node_cache(s3_url, tmp_path):
    store = prepare_store(s3_url, fingerprint=FP).open()
    variants = [store.put("fxgraph", "k", b"one"), store.put("fxgraph", "k", b"two"),
                store.put("autotune", "t", b"three")]
    snapshot = store.put_snapshot("tag", b"snapshot payload")
    warmup = start(s3_url, str(tmp_path / "node"))
    warmup.request(FP, "tag")
    assert warmup.index(60) == store.list_index()
    assert sorted(sum(store.list_index().values(), [])) == sorted(variants)
    assert warmup.snapshot(60) == snapshot
    # The parent reads it from the node cache alone, verified: no store request.
    node = prepare_store(s3_url, fingerprint=FP, node_cache_dir=str(tmp_path / "node"))
    assert node.read_on_node(snapshot) == b"snapshot payload"
    deadline = time.monotonic() + 30
    while not warmup.stats() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert warmup.stats()["fetches"] == 1
    warmup.close()


def test_an_empty_store_is_an_answer(s3_url, tmp_path):
    warmup = start(s3_url, str(tmp_path / "node"))
    warmup.request(FP, "tag")
    assert warmup.index(60) == {}
    assert warmup.snapshot(60) is None
    warmup.close()


def test_a_store_it_cannot_open_is_nothing_found(s3_endpoint, tmp_path, caplog):
    """A missing bucket: nothing found, at once (the ranks' own opens say what is wrong)."""
    warmup = start("s3://no-such-bucket-here/x", str(tmp_path / "node"))
    warmup.request(FP, "tag")
    started = time.monotonic()
    with caplog.at_level(logging.INFO):
        assert warmup.index(60) == {}
        assert warmup.snapshot(60) is None
    assert time.monotonic() - started < 30
    assert "no-such-bucket-here" in caplog.text
    warmup.close()


def test_a_late_child_is_waited_for_no_longer_than_the_deadline(s3_url, tmp_path, caplog):
    warmup = start(s3_url, str(tmp_path / "node"))  # never told what to fetch
    started = time.monotonic()
    with caplog.at_level(logging.INFO):
        assert warmup.index(0.5) == {}
    assert time.monotonic() - started < 5
    assert "gave no index within" in caplog.text
    warmup.cancel()  # it exits
    warmup.close()


def test_a_child_that_dies_is_gone(s3_url, tmp_path, caplog):
    """Not the store's fault: the parent asks the store itself, told once."""
    warmup = start(s3_url, str(tmp_path / "node"))
    warmup.close()  # killed before it answered
    with pytest.raises(Gone):
        warmup.index(60)
    with pytest.raises(Gone):
        warmup.snapshot(60)
    assert caplog.text.count("warm-up process failed") == 1
