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
StoreStats}, or {"error": text} in place of whatever it could not do.
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
from storage.layout import is_digest
from storage.store import PreparedStore, prepare_store

log = logging.getLogger(__name__)

PENDING = "pending"  # the fingerprint the child opens with, before it is told the real one


class Warmup:
    """The parent's handle on the child: its answers, each awaited within a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._proc = proc
        self._answers: dict[str, Any] = {}
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

    def index(self, timeout_s: float) -> dict[tuple[str, str], list[str]] | None:
        """The store's index as `ArtifactStore.list_index` gives it; None if the child
        failed or did not answer within `timeout_s`."""
        found = self._answer("index", timeout_s)
        if not isinstance(found, list):
            return None
        return {(kind, key): digests for kind, key, digests in found}

    def snapshot(self, timeout_s: float) -> tuple[bool, str | None]:
        """(answered, digest): the digest of the snapshot now in the node cache, None if
        the store holds none; answered False if the child failed or is late."""
        if "snapshot" not in self._wait_for("snapshot", timeout_s):
            return False, None
        digest = self._answers["snapshot"]
        return True, digest if isinstance(digest, str) and is_digest(digest) else None

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
        except OSError as exc:  # the child is gone: its answers never come
            log.warning("the store's warm-up process is gone (%s); opening it here", exc)

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

    def _wait_for(self, name: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not ({name, "error", "eof"} & self._answers.keys()):
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("the store's warm-up process gave no %s within %.0f s; "
                                "asking the store here", name, timeout_s)
                    break
                self._cond.wait(left)
            return dict(self._answers)

    def _answer(self, name: str, timeout_s: float) -> Any:
        answers = self._wait_for(name, timeout_s)
        if name not in answers and "error" in answers:
            log.warning("the store's warm-up process failed (%s); asking the store here",
                        answers["error"])
        return answers.get(name)


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
    except Exception as exc:  # noqa: BLE001 - the parent asks the store itself
        _say(error=f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
