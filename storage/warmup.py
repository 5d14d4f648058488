"""A node's first look at a remote store, in a process of its own, beside torch's import.

Opening an object store costs a process its client's imports (s3fs, aiobotocore, botocore:
0.3-0.6 s of CPU under the GIL per process), which no thread of a rank can hide: torch's
import holds the same GIL. A warm start needs two things from the store before its first
compile, the index and the snapshot, so one process per node, started before torch is
imported, opens the store; told the fingerprint, it lists the index and fetches the
snapshot into the node cache, and says what it found. The node's ranks open the store
themselves only when they need more of it (a miss, a publish, the record of use).

Protocol, one JSON object per line: the parent writes {"fingerprint": ..., "tag": ...}
(tag null: no snapshot) or closes stdin (nothing to do); the child answers {"index":
[[kind, key, [digest, ...]], ...]}, then {"snapshot": digest or null}, then {"stats":
StoreStats}, or {"error": text, "store_failed": whether the store refused or did not
answer} in place of whatever it could not do.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from typing import IO, Any

from storage import sealed
from storage.errors import StoreError
from storage.layout import is_digest
from storage.store import PreparedStore, prepare_store

log = logging.getLogger(__name__)

PENDING = "pending"  # the fingerprint the child opens with, before it is told the real one


class Warmup:
    """The parent's handle on the child: its answers, each awaited within a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._proc = proc
        self._answers: dict[str, Any] = {}
        self._gone = False  # said once
        self._cond = threading.Condition()
        threading.Thread(target=self._read, args=(proc.stdout,), name="pt2cc-warmup",
                         daemon=True).start()

    @classmethod
    def start(cls, url: str, node_cache_dir: str, node_cache_max_bytes: int,
              timeout_s: float) -> Warmup | None:
        """The child process, or None (one warning) if it cannot be started."""
        cmd = [sys.executable, "-m", "storage.warmup", url, node_cache_dir,
               str(node_cache_max_bytes), str(timeout_s)]
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    text=True, env=_env())
        except OSError as exc:
            log.warning("cannot start the store's warm-up process (%s); opening it here", exc)
            return None
        return cls(proc)

    def request(self, fingerprint: str, tag: str | None) -> None:
        """Tell the child what to fetch; it answers once, then exits."""
        self._send({"fingerprint": fingerprint, "tag": tag})

    def cancel(self) -> None:
        """Nothing to fetch (the store is not used): the child exits."""
        self._send(None)

    def index(self, timeout_s: float) -> dict[tuple[str, str], list[str]]:
        """The store's index as `ArtifactStore.list_index` gives it; {} if the store
        failed the child or the child is late (the first lookups miss). Raises Gone."""
        found = self._answer("index", timeout_s)
        if not isinstance(found, list):
            return {}
        return {(kind, key): digests for kind, key, digests in found}

    def snapshot(self, timeout_s: float) -> str | None:
        """The digest of the snapshot now in the node cache; None if the store holds
        none, failed the child, or the child is late. Raises Gone."""
        digest = self._answer("snapshot", timeout_s)
        return digest if isinstance(digest, str) and is_digest(digest) else None

    def stats(self) -> dict[str, int]:
        """The child's store counters (StoreStats), once it has answered everything."""
        found = self._answers.get("stats")
        return found if isinstance(found, dict) else {}

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()

    def _send(self, message: dict[str, Any] | None) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            if message is not None:
                stdin.write(json.dumps(message) + "\n")
            stdin.close()
        except OSError as exc:  # the child is gone: `_answer` says so
            log.debug("the store's warm-up process is gone (%s)", exc)

    def _read(self, stdout: IO[str] | None) -> None:
        assert stdout is not None
        for line in stdout:
            try:
                answer = json.loads(line)
            except ValueError:
                continue
            if isinstance(answer, dict):
                with self._cond:
                    self._answers.update(answer)
                    self._cond.notify_all()
        with self._cond:
            self._answers["eof"] = True
            self._cond.notify_all()
        self._proc.wait()

    def _answer(self, name: str, timeout_s: float) -> Any:
        """The child's answer `name`; None where the store failed it or it is late: the
        store is no faster for the parent. Gone where the child itself failed."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not ({name, "error", "eof"} & self._answers.keys()):
                left = deadline - time.monotonic()
                if left <= 0:
                    log.info("the store's warm-up process gave no %s within %.0f s; the "
                             "first lookups miss", name, timeout_s)
                    return None
                self._cond.wait(left)
            answers = dict(self._answers)
        if name in answers:
            return answers[name]
        if answers.get("store_failed"):  # the ranks' own opens will say what is wrong
            log.info("the store's warm-up process: %s", answers["error"])
            return None
        why = answers.get("error", "it exited without answering")
        with self._cond:
            first, self._gone = not self._gone, True
        if first:
            log.warning("the store's warm-up process failed (%s); asking the store here", why)
        raise Gone(why)


class Gone(Exception):
    """The child failed (not the store): the parent asks the store itself."""


def _env() -> dict[str, str]:
    """Ours, with this package's directory first on the path: the child imports it from
    where we did (a checkout on sys.path, as well as an installed copy)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": here + (os.pathsep + path if path else "")}


def _say(**answer: Any) -> None:
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


def _serve(prepared: PreparedStore) -> None:
    connected = prepared.connect()
    line = sys.stdin.readline()
    if not line:
        return
    request = json.loads(line)
    store = prepared.with_fingerprint(request["fingerprint"]).open(connected)
    _say(index=[[kind, key, digests] for (kind, key), digests in store.list_index().items()])
    tag = request.get("tag")
    if tag:
        payload = store.get_snapshot(tag)  # verified, and kept in the node cache
        _say(snapshot=sealed.digest_of(payload) if payload is not None else None)
    _say(stats=store.stats.as_dict())


def main(argv: list[str]) -> int:
    url, node_cache_dir, max_bytes, timeout_s = argv
    logging.basicConfig(format="[pt2cc warm-up] %(levelname)s %(message)s",
                        level=logging.WARNING)
    try:
        prepared = prepare_store(url, fingerprint=PENDING, node_cache_dir=node_cache_dir,
                                 node_cache_max_bytes=int(max_bytes),
                                 timeout_s=float(timeout_s))
        _serve(prepared)
    except StoreError as exc:
        _say(error=f"{type(exc).__name__}: {exc}", store_failed=True)
        return 1
    except Exception as exc:  # noqa: BLE001 - the parent asks the store itself
        _say(error=f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
