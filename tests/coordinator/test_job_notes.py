"""Listings one process of a node makes for the job, read by the node's others."""

import logging
import threading
import time

from coordinator.job_notes import JobNotes
from storage.node_cache import NodeCache

INDEX = [["fxgraph", "k", ["d1", "d2"]]]


def notes(tmp_path) -> JobNotes:
    return JobNotes(NodeCache(tmp_path / "node"), lambda: "job-token", "s3://bucket/x")


def test_the_others_wait_for_the_leaders_note(tmp_path):
    listed: list[str] = []
    got: list[list] = []

    def other() -> None:
        got.append(notes(tmp_path).from_leader(
            "", lambda: listed.append("other") or [], leader=False, wait_s=30))

    thread = threading.Thread(target=other)
    thread.start()
    time.sleep(0.3)  # the other rank is there first
    leader = notes(tmp_path).from_leader("", lambda: listed.append("leader") or INDEX,
                                         leader=True, wait_s=30)
    thread.join(10)
    assert leader == INDEX and got == [INDEX] and listed == ["leader"]


def test_the_leaders_empty_answer_is_shared(tmp_path):
    """A store without a snapshot: the others learn it, rather than asking it themselves."""
    assert notes(tmp_path).from_leader("s", lambda: [], leader=True, wait_s=30) == []
    assert notes(tmp_path).from_leader("s", lambda: ["asked"], leader=False, wait_s=30) == []


def test_without_the_leaders_note_the_others_ask_after_the_deadline(tmp_path, caplog):
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        found = notes(tmp_path).from_leader("", lambda: INDEX, leader=False, wait_s=0.3)
    assert found == INDEX and time.monotonic() - started < 5
    assert "left no" in caplog.text
