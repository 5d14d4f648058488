"""An HTTP proxy on loopback in front of moto's S3 server that injects store faults.

The job's processes reach S3 through it (AWS_ENDPOINT_URL), so s3fs, botocore's own
retries and the store's retries all meet the fault as they would meet real S3:

* ``latency_s``: every request waits this long before it is forwarded (a slow store);
* ``slowdown``: ``(period, burst)`` answers requests ``n`` with ``n % period < burst``
  with ``503 SlowDown`` (throttling bursts);
* ``read_only``: PUT, POST and DELETE get ``403 AccessDenied`` (a store we may not write);
* ``stop()``: the listener closes and open connections are cut (the store is gone).

Moto itself keeps running, so a test can check afterwards what was published.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
        "proxy-connection", "content-length"}
_ERROR = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
          "<Message>{message}</Message><RequestId>pt2cc-faults</RequestId></Error>")


class FaultProxy:
    def __init__(self, upstream: str, *, latency_s: float = 0.0,
                 slowdown: tuple[int, int] | None = None, read_only: bool = False) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.latency_s = latency_s
        self.slowdown = slowdown
        self.read_only = read_only
        self.requests = 0
        self.injected: dict[str, int] = {"slowdown": 0, "denied": 0}
        self.methods: dict[str, int] = {}
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """The store is gone: refuse new connections and cut the open ones."""
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _decide(self, method: str) -> str | None:
        with self._lock:
            n = self.requests
            self.requests += 1
            self.methods[method] = self.methods.get(method, 0) + 1
            if self.read_only and method in ("PUT", "POST", "DELETE"):
                self.injected["denied"] += 1
                return "denied"
            if self.slowdown is not None and n % self.slowdown[0] < self.slowdown[1]:
                self.injected["slowdown"] += 1
                return "slowdown"
        return None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with proxy._lock:
                    proxy._conns.add(self.connection)

            def finish(self) -> None:
                with proxy._lock:
                    proxy._conns.discard(self.connection)
                super().finish()

            def log_message(self, *args: object) -> None:
                pass

            def _body(self) -> bytes | None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else None

            def _reply(self, status: int, reason: str, headers: list[tuple[str, str]],
                       data: bytes, length: str | None = None) -> None:
                self.send_response(status, reason)
                for k, v in headers:
                    if k.lower() not in _HOP:
                        self.send_header(k, v)
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _forward(self) -> None:
                body = self._body()
                if proxy.latency_s:
                    time.sleep(proxy.latency_s)
                fault = proxy._decide(self.command)
                if fault == "slowdown":
                    err = _ERROR.format(code="SlowDown", message="Please reduce your request "
                                        "rate.").encode()
                    self._reply(503, "Slow Down", [("Content-Type", "application/xml")], err)
                    return
                if fault == "denied":
                    err = _ERROR.format(code="AccessDenied", message="Access Denied").encode()
                    self._reply(403, "Forbidden", [("Content-Type", "application/xml")], err)
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=120)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    if body is not None:
                        headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                    self._reply(resp.status, resp.reason, resp.getheaders(), data, length)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        return Handler
