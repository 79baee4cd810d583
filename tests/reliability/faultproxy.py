"""A fault-injecting HTTP proxy for loopback tests: real sockets between s3fs and moto.

Why a proxy and not a mocked client: the faults that hurt a training run happen on the wire
(a 503 storm, a reset connection, a body that stops halfway, a flipped bit), and what they
exercise is the whole stack: aiohttp, botocore, s3fs and then our retry and integrity
checks. A proxy in front of moto's real HTTP server produces exactly those bytes.

Each request is matched against the configured :class:`Fault` rules in order; the first
rule that matches (method, path substring, and still has uses left after ``skip``) decides
what happens to that request. Requests that match nothing are forwarded untouched. Every
request is recorded with the fault it got, so tests can count attempts.
"""

from __future__ import annotations

import http.client
import http.server
import socket
import socketserver
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

#: Faults the proxy can inject.
KINDS = ("status", "reset", "stall", "slow", "truncate", "alter", "lie", "hang", "cut", "strip")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


@dataclass
class Fault:
    """One rule: what to do to which requests, how many times.

    kind:
      ``status``   answer ``status`` with an S3 error document carrying ``code``
                   (503 + ``SlowDown`` is S3's throttling answer) without asking upstream;
      ``reset``    close the connection with a TCP RST before answering;
      ``stall``    send the headers and ``fraction`` of the body, then go silent for
                   ``delay`` seconds (or until the proxy closes), then close;
      ``slow``     wait ``delay`` seconds, then answer normally;
      ``truncate`` announce the full Content-Length, send ``fraction`` of the body, close;
      ``alter``    flip bytes in the middle of the body, same length and headers;
      ``lie``      send ``fraction`` of the body with a Content-Length that matches it
                   (only a checksum can tell);
      ``hang``     read the request and never answer (until the proxy closes);
      ``cut``      forward only ``fraction`` of the *request* body, with a Content-Length
                   that matches it (an upload damaged on the way: only a checksum can tell);
      ``strip``    forward the request without the headers whose names start with one of
                   ``headers`` (comma-separated): an S3-compatible server that ignores them.
    """

    kind: str
    times: int | None = 1  # how many matching requests get the fault; None: all of them
    method: str | None = "GET"
    path: str | None = None  # substring of the URL-decoded request path
    query: str | None = None  # substring of the raw query string ("partNumber=", "uploadId=")
    headers: str = ""  # for "strip": lower-case header name prefixes, comma-separated
    skip: int = 0  # let this many matching requests through first
    status: int = 503
    code: str = "ServiceUnavailable"
    delay: float = 0.0
    fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {', '.join(KINDS)}")

    def matches(self, method: str, path: str, query: str = "") -> bool:
        if self.method is not None and method != self.method:
            return False
        if self.query is not None and self.query not in query:
            return False
        return self.path is None or self.path in path


@dataclass(frozen=True)
class Seen:
    """One request the proxy received and what it did to it (``ok``: forwarded as is)."""

    method: str
    path: str
    fault: str
    query: str = ""  # the raw query string (a presigned URL's signature lives here)


class FaultProxy:
    """A threaded HTTP/1.1 proxy on 127.0.0.1 in front of ``upstream`` (``http://host:port``)."""

    def __init__(self, upstream: str) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the fault proxy only fronts loopback servers, not {upstream}")
        self.upstream = (parsed.hostname, parsed.port or 80)
        self.faults: list[Fault] = []
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server: _Server | None = None
        self.port = 0
        self.up()

    # -- control --------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def clear(self) -> None:
        """Forget every rule and every recorded request."""
        with self._lock:
            self.faults.clear()
            self.seen.clear()

    def requests(self, method: str | None = None, path: str | None = None) -> list[Seen]:
        with self._lock:
            return [
                s
                for s in self.seen
                if (method is None or s.method == method) and (path is None or path in s.path)
            ]

    def down(self) -> None:
        """Stop listening and reset every open connection: the origin is unreachable."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.reset_all()
            self._server = None

    def up(self) -> None:
        """(Re)start listening, on the same port as before if there was one."""
        if self._server is not None:
            return
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.proxy = self
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, name="faultproxy", daemon=True).start()
        self._server = server

    def close(self) -> None:
        self._closing.set()  # releases stalled and hanging handlers
        self.down()

    # -- used by the handler ---------------------------------------------------------------------
    def _decide(self, method: str, path: str, query: str = "") -> Fault | None:
        with self._lock:
            chosen = None
            for fault in self.faults:
                if not fault.matches(method, path, query):
                    continue
                if fault.skip > 0:
                    fault.skip -= 1
                    continue
                if fault.times is None or fault.times > 0:
                    if fault.times is not None:
                        fault.times -= 1
                    chosen = fault
                    break
            self.seen.append(Seen(method, path, chosen.kind if chosen else "ok", query))
            return chosen

    def _wait(self, seconds: float) -> None:
        self._closing.wait(seconds)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: FaultProxy

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.live: set[socket.socket] = set()
        self.live_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.live_lock:
            self.live.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.live_lock:
            self.live.discard(request)
        super().shutdown_request(request)

    def reset_all(self) -> None:
        """Kept-alive connections would otherwise outlive the listener."""
        with self.live_lock:
            live, self.live = list(self.live), set()
        for sock in live:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass

    def _proxy(self) -> None:
        proxy = self.server.proxy
        raw_path, _, query = self.path.partition("?")
        path = urllib.parse.unquote(raw_path)
        body = self._read_body()
        fault = proxy._decide(self.command, path, query)
        if fault is not None and fault.kind == "reset":
            self._reset()
            return
        if fault is not None and fault.kind == "hang":
            proxy._wait(fault.delay or 3600)
            self._reset()
            return
        if fault is not None and fault.kind == "status":
            self._error(fault)
            return
        if fault is not None and fault.kind == "slow":
            proxy._wait(fault.delay)
        if fault is not None and fault.kind == "cut":
            body = body[: int(len(body) * fault.fraction)]
        strip = (
            tuple(fault.headers.split(",")) if fault is not None and fault.kind == "strip" else ()
        )
        status, reason, headers, data = self._forward(body, strip)
        if (
            fault is None
            or fault.kind in ("slow", "cut", "strip")
            or self.command == "HEAD"
            or not data
        ):
            self._answer(status, reason, headers, data, len(data))
            return
        cut = int(len(data) * fault.fraction)
        if fault.kind == "alter":
            mid = len(data) // 2
            flipped = bytes(b ^ 0xFF for b in data[mid : mid + 16])
            self._answer(
                status, reason, headers, data[:mid] + flipped + data[mid + 16 :], len(data)
            )
        elif fault.kind == "lie":
            self._answer(status, reason, headers, data[:cut], cut)
        elif fault.kind == "truncate":
            self._answer(status, reason, headers, data[:cut], len(data))
            self.close_connection = True
        elif fault.kind == "stall":
            self._answer(status, reason, headers, data[:cut], len(data))
            proxy._wait(fault.delay or 3600)
            self.close_connection = True

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _proxy

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(
        self, body: bytes, strip: tuple[str, ...] = ()
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.server.proxy.upstream, timeout=60)
        try:
            headers = {
                k: v
                for k, v in self.headers.items()
                if k.lower() not in _HOP_BY_HOP and not (strip and k.lower().startswith(strip))
            }
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
            return resp.status, resp.reason, out, data
        finally:
            conn.close()

    def _answer(
        self, status: int, reason: str, headers: list[tuple[str, str]], data: bytes, length: int
    ) -> None:
        self.send_response_only(status, reason)
        for k, v in headers:
            if k.lower() != "content-length":
                self.send_header(k, v)
        announced = length
        if self.command == "HEAD":
            announced = next(
                (int(v) for k, v in headers if k.lower() == "content-length"), len(data)
            )
        self.send_header("Content-Length", str(announced))
        self.end_headers()
        if self.command != "HEAD" and data:
            self.wfile.write(data)
        self.wfile.flush()

    def _error(self, fault: Fault) -> None:
        doc = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{fault.code}</Code><Message>injected by faultproxy</Message>"
            "<RequestId>faultproxy</RequestId></Error>"
        ).encode()
        self.send_response_only(fault.status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(doc)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(doc)
        self.wfile.flush()

    def _reset(self) -> None:
        """Abort the connection with RST (SO_LINGER 0), as a crashed peer or middlebox does."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass


def wait_until(predicate: object, timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until true or ``timeout``; tests use it instead of fixed sleeps."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False
