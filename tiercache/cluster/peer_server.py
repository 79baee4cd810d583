"""The engine's HTTP server for its peers: blobs out of its tiers, zero-copy where it can.

A request names a cache key and its origin. If a tier holds the key (and it is still the
origin's current version, by the node's ``[validation]`` rules), the blob file goes out with
``sendfile``, straight from the tier's file (shared memory for the RAM tier, the page cache
for the SSD tier): the bytes never enter this process. On a miss the engine reads the origin
once for everybody (single flight with local readers and other peers), then serves what it
stored. Every request must carry the cluster's token; others get 401.

The server never forwards a request to another peer: a request it receives is answered from
its tiers or its origin, so no request can loop between nodes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import weakref
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from ..index import Entry
from ..origin import Origin
from ..tiers.store import Buffer, CorruptBlobError
from . import protocol as p

if TYPE_CHECKING:
    from . import Cluster

log = logging.getLogger("tiercache.cluster.server")

#: Seconds an idle kept-alive connection from a peer is held open.
IDLE_SECONDS = 120.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # a restarted engine rebinds at once, TIME_WAIT or not
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], cluster: Cluster, family: int) -> None:
        self.address_family = family
        self.cluster = cluster
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.conn_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A requester that went away mid-answer (killed, timed out) is routine: no traceback.
        log.debug("peer request from %s ended with an error", client_address, exc_info=True)

    def shutdown_request(self, request: Any) -> None:
        with self.conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)


class PeerServer:
    """Binds ``host:port`` (retrying in the background while the port is taken) and serves."""

    def __init__(self, cluster: Cluster, host: str, port: int) -> None:
        self.cluster = cluster
        self.host = host
        self.requested_port = port
        self.port = 0
        self._server: _Server | None = None
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="tiercache-peer-server", daemon=True)
        _LIVE.add(self)

    def start(self) -> None:
        self._thread.start()

    def wait_bound(self, timeout: float) -> bool:
        return self._bound.wait(timeout)

    def _run(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        delay = 0.2
        while not self._stop.is_set():
            try:
                server = _Server((self.host, self.requested_port), self.cluster, family)
                break
            except OSError as exc:
                # The port of a killed engine can stay taken for a moment (a child process
                # that inherited it); peers meanwhile see this node as down and read around it.
                log.warning("peer server cannot listen on %s:%s (%s); retrying",
                            self.host, self.requested_port, exc)  # fmt: skip
                if self._stop.wait(delay):
                    return
                delay = min(5.0, delay * 2)
        else:
            return
        self._server = server
        self.port = int(server.server_address[1])
        self._bound.set()
        log.info("peer server listening on %s:%d", self.host, self.port)
        server.serve_forever(poll_interval=0.25)

    def close(self) -> None:
        self._stop.set()
        server = self._server
        if server is None:
            return
        if os.getpid() == self._pid:
            server.shutdown()
        server.server_close()
        with server.conn_lock:
            conns = list(server.connections)
        for conn in conns:  # kept-alive peers see the connection end, and reconnect elsewhere
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()

    def after_fork_in_child(self) -> None:
        """A forked child (a DataLoader worker) must not keep the listening socket or peer
        connections open: a dead engine's port would stay bound, and accept nothing."""
        server = self._server
        if server is None:
            return
        with contextlib.suppress(OSError):
            server.socket.close()
        for conn in list(server.connections):
            with contextlib.suppress(OSError):
                conn.close()
        self._server = None


_LIVE: weakref.WeakSet[PeerServer] = weakref.WeakSet()


def _close_in_child() -> None:
    for server in list(_LIVE):
        server.after_fork_in_child()
    _LIVE.clear()


os.register_at_fork(after_in_child=_close_in_child)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE_SECONDS
    # Headers and body go out in separate writes: with Nagle's algorithm the body would wait
    # for the peer's delayed ACK of the headers (40 ms a request).
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    # -- dispatch ------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        url = urlsplit(self.path)
        if not self._authorized():
            return
        if url.path == p.BLOB:
            self._blob(parse_qs(url.query))
        elif url.path == p.HELLO:
            self._json(200, self.server.cluster.hello())
        else:
            self._fail(404, "no-endpoint", f"no endpoint {url.path}")

    def do_POST(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(min(length, 1 << 16))
        if not self._authorized():
            return
        if url.path == p.SUSPECT:
            key = parse_qs(url.query).get("key", [""])[0]
            self._json(200, {"repaired": self.server.cluster.check_suspect(key)})
        else:
            self._fail(404, "no-endpoint", f"no endpoint {url.path}")

    def _authorized(self) -> bool:
        if self.server.cluster.authorized(self.headers.get("Authorization", "")):
            return True
        self._fail(401, "unauthorized", "peer requests need Authorization: Bearer <token>",
                   {"WWW-Authenticate": 'Bearer realm="tiercache"'})  # fmt: skip
        return False

    # -- answers -------------------------------------------------------------------------------
    def _fail(
        self, status: int, reason: str, message: str, extra: dict[str, str] | None = None
    ) -> None:
        body = message.encode()
        self.send_response(status)
        self.send_header(p.REASON, reason)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value: dict[str, Any]) -> None:
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _blob(self, query: dict[str, list[str]]) -> None:
        cluster = self.server.cluster
        key = query.get("key", [""])[0]
        try:
            origin = cluster.origins.resolve(self.headers.get(p.ORIGIN, ""))
        except ValueError as exc:
            self._fail(422, "origin-refused", str(exc))
            return
        except Exception as exc:  # the filesystem could not be built here
            self._fail(502, "origin-error", f"{type(exc).__name__}: {exc}")
            return
        prefix = f"{origin.protocol}://"
        if not key.startswith(prefix):
            self._fail(400, "bad-key", f"key {key!r} is not of the origin {prefix}")
            return
        try:
            wanted = _parse_range(self.headers.get("Range"))
        except ValueError as exc:
            self._fail(416, "bad-range", str(exc))
            return
        path = key[len(prefix) :]
        want = self.headers.get(p.WANT_VERSION) or None
        requester = self.headers.get(p.NODE, "")
        engine = cluster.engine
        cluster.asked_for(key)
        for _ in range(4):
            entry = engine.index.get(key)
            if entry is not None and cluster.freshness.current(origin, path, key, entry, want):
                if self._send_entry(entry, "hit", wanted, requester):
                    engine.record_access(entry.blob_id, entry.tier, entry.blob.stored_size)
                    return
                continue  # moved or evicted while we looked: look again
            try:
                result = self._fetch(origin, path)
            except FileNotFoundError as exc:
                self._fail(404, "not-found", str(exc))
                return
            except Exception as exc:  # the origin failed for us: the requester tries it itself
                self._fail(502, "origin-error", f"{type(exc).__name__}: {exc}")
                return
            if result.entry is not None:
                if self._send_entry(result.entry, "miss", wanted, requester):
                    return
                continue
            self._send_bytes(result.data, result.version, time.time(), "miss", wanted, requester)
            return
        self._fail(503, "busy", f"{key}: kept changing while being served; read it elsewhere")

    def _fetch(self, origin: Origin, path: str) -> Any:
        """The engine's single-flight fetch, with ``100 Continue`` sent while it runs."""
        done = threading.Event()
        lock = threading.Lock()

        def beat() -> None:
            while not done.wait(p.HEARTBEAT_SECONDS):
                with lock:
                    if done.is_set():
                        return
                    try:
                        self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    except OSError:
                        return

        beater = threading.Thread(target=beat, name="tiercache-peer-heartbeat", daemon=True)
        beater.start()
        try:
            return self.server.cluster.engine.fetch(origin, path, via_peers=False)
        finally:
            with lock:
                done.set()
            beater.join()

    def _send_entry(
        self, entry: Entry, state: str, wanted: tuple[int, int | None] | None, requester: str
    ) -> bool:
        """Send a stored blob; False if it is gone (the caller looks again)."""
        cluster = self.server.cluster
        store = cluster.engine.stores[entry.tier]
        if entry.blob.small or entry.blob.compressed:
            try:
                data = store.get(entry.blob_id, entry.blob)
            except FileNotFoundError:
                return False
            except CorruptBlobError:
                cluster.engine.invalidate(entry.key)
                return False
            self._send_bytes(data, entry.version, entry.fetched_at, state, wanted, requester)
            return True
        try:
            fd = os.open(store.blob_path(entry.blob_id), os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            size = os.fstat(fd).st_size
            if size != entry.blob.stored_size:
                cluster.engine.invalidate(entry.key)  # truncated: damage, never served
                return False
            start, end = _resolve(wanted, size)
            if (start, end) == (0, size):
                crc = entry.blob.checksum
            else:  # a part: its own checksum, from the (mapped) file
                crc = _crc_of_range(fd, start, end)
            self._headers(end - start, crc, entry.version, entry.fetched_at, state, wanted, size)
            with open(fd, "rb", buffering=0, closefd=False) as f:
                if end > start:
                    self.connection.sendfile(f, start, end - start)
        finally:
            os.close(fd)
        cluster.count_served(requester, end - start)
        return True

    def _send_bytes(
        self,
        data: Buffer,
        version: str,
        fetched_at: float,
        state: str,
        wanted: tuple[int, int | None] | None,
        requester: str,
    ) -> None:
        view = memoryview(data)
        start, end = _resolve(wanted, len(view))
        part = view[start:end]
        self._headers(len(part), zlib.crc32(part), version, fetched_at, state, wanted, len(view))
        self.wfile.write(part)
        self.server.cluster.count_served(requester, len(part))

    def _headers(
        self,
        length: int,
        crc: int,
        version: str,
        fetched_at: float,
        state: str,
        wanted: tuple[int, int | None] | None,
        total: int,
    ) -> None:
        self.send_response(206 if wanted is not None else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        if wanted is not None:
            end = wanted[0] + length - 1
            self.send_header("Content-Range", f"bytes {wanted[0]}-{end}/{total}")
        self.send_header(p.CRC32, f"{crc:08x}")
        self.send_header(p.VERSION, version)
        self.send_header(p.FETCHED_AT, repr(fetched_at))
        self.send_header(p.CACHE, state)
        self.end_headers()


def _parse_range(header: str | None) -> tuple[int, int | None] | None:
    """``bytes=a-b`` or ``bytes=a-`` -> (a, b + 1 or None); one range only."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    first, dash, last = spec.strip().partition("-")
    if unit.strip() != "bytes" or not dash or not first.isdigit() or "," in spec:
        raise ValueError(f"unsupported Range {header!r}; one 'bytes=start-end' range")
    if last and not last.isdigit():
        raise ValueError(f"unsupported Range {header!r}")
    start = int(first)
    end = int(last) + 1 if last else None
    if end is not None and end <= start:
        raise ValueError(f"empty Range {header!r}")
    return start, end


def _resolve(wanted: tuple[int, int | None] | None, size: int) -> tuple[int, int]:
    if wanted is None:
        return 0, size
    start = min(wanted[0], size)
    end = size if wanted[1] is None else min(wanted[1], size)
    return start, max(start, end)


def _crc_of_range(fd: int, start: int, end: int) -> int:
    import mmap

    if end <= start:
        return zlib.crc32(b"")
    with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as mm:
        view = memoryview(mm)
        try:
            return zlib.crc32(view[start:end])
        finally:
            view.release()


class Freshness:
    """Whether an owner's copy may go to a peer: the node's ``[validation]`` rules, as for
    its own readers (a TTL validation is the engine's, once for the node), plus the
    requester's word when it knows the current version to be another one."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def current(self, origin: Origin, path: str, key: str, entry: Entry, want: str | None) -> bool:
        engine = self.cluster.engine
        rules = engine.config.validation
        if want is None or want == entry.version:
            if rules.mode == "never" or origin.config.offline:
                return True
            if rules.mode == "ttl":
                if 0 <= time.time() - entry.fetched_at < rules.ttl_seconds:
                    return True
                return engine.validate(origin, path)
        if origin.still_at(path, entry.version):  # "always", or the requester knows better
            return True
        log.info("%s changed at the origin since %s; refetching for a peer", key, entry.version)
        engine.counters.add("stale_refetches")
        engine.invalidate(key)
        return False
