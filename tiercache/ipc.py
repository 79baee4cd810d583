"""How client processes talk to the engine: length-prefixed messages on a Unix socket.

A message is a JSON header plus an optional binary payload (bytes of an object the engine
read but did not store, or a pickled origin filesystem). Only the node's own user can
connect: the socket lives in the private index directory with mode 0600.

Requests (``op``):

* ``fetch``  {path, want_data} + pickled origin
                                    -> {status: "cached" | "data" + the bytes | "error"}
* ``access`` {records: [[blob_id, tier, size], ...]}   one way, batched
* ``hint``   {paths, stream} + pickled origin           one way
* ``invalidate`` {key}                -> {status: "ok"}
* ``validate`` {path} + pickled origin -> {status: "ok", fresh}: one HEAD for the node
* ``ping``                            -> {status: "ok", pid}
* ``handover``                        -> {status: "ok"}: an embedded engine steps down

The server adds ``peer_pid`` (the sender's pid, from SO_PEERCRED) to every header.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: A message body: any bytes-like object (a fetch's bytearray is sent without a copy).
Payload = bytes | bytearray | memoryview

log = logging.getLogger("tiercache.ipc")
_FRAME = struct.Struct("<IQ")  # header length, payload length
Reply = tuple[dict[str, Any], bytes]


class EngineUnavailable(ConnectionError):
    """No engine answered on the socket (it exited, or none has started yet)."""


def send(sock: socket.socket, header: dict[str, Any], payload: Payload = b"") -> None:
    head = json.dumps(header).encode()
    sock.sendall(_FRAME.pack(len(head), len(payload)) + head)
    if payload:
        sock.sendall(payload)


def recv(sock: socket.socket) -> tuple[dict[str, Any], bytes]:
    head_len, payload_len = _FRAME.unpack(_recv_exact(sock, _FRAME.size))
    header = json.loads(_recv_exact(sock, head_len))
    payload = _recv_exact(sock, payload_len) if payload_len else b""
    return header, payload


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EngineUnavailable("engine closed the connection")
        got += k
    return bytes(buf)


class EngineServer:
    """Accepts client connections and hands each request to ``handle`` in its own thread."""

    def __init__(
        self,
        path: Path,
        handle: Callable[[dict[str, Any], bytes], tuple[dict[str, Any], Payload] | None],
    ) -> None:
        self.path = path
        self.handle = handle
        self._pid = os.getpid()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a dead engine's socket; we hold the engine lock, so nobody serves it
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o600)
        self.sock.listen(128)
        self._closed = False
        self._draining = False
        self._busy = 0  # requests being handled right now
        self._idle = threading.Condition()
        self._acceptor = threading.Thread(target=self._accept, name="tiercache-engine", daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        peer_pid = _peer_pid(conn)
        with conn:
            while True:
                try:
                    header, payload = recv(conn)
                except (EngineUnavailable, OSError, ValueError):
                    return
                header["peer_pid"] = peer_pid
                oneway = bool(header.get("oneway"))
                with self._idle:
                    draining = self._draining
                    if not draining:
                        self._busy += 1
                reply: tuple[dict[str, Any], Payload] | None = None
                if draining:  # handing over: the client waits for the next engine
                    if not oneway:
                        reply = {"status": "draining"}, b""
                else:
                    try:
                        reply = self._handle(header, payload)
                    finally:
                        with self._idle:
                            self._busy -= 1
                            self._idle.notify_all()
                if reply is not None and not oneway:  # one-way senders never read a reply
                    try:
                        send(conn, *reply)
                    except OSError:
                        return

    def _handle(
        self, header: dict[str, Any], payload: bytes
    ) -> tuple[dict[str, Any], Payload] | None:
        try:
            return self.handle(header, payload)
        except Exception as exc:  # report to the client, keep serving others
            if header.get("oneway"):
                log.warning("engine request %s failed: %s", header.get("op"), exc)
                return None
            return {"status": "error", "type": type(exc).__name__, "message": str(exc)}, b""

    def _stop_listening(self) -> bool:
        """No new connections. ``shutdown`` first: closing a listening socket does not wake
        a thread blocked in ``accept`` on Linux, which would then outlive the server.

        In a forked child, which shares the socket, only the child's descriptor is closed:
        a shutdown (or unlinking the path) there would silence the parent's engine. Returns
        whether this process owns the server."""
        owner = os.getpid() == self._pid
        if owner:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        return owner

    def drain(self, timeout: float = 30.0) -> None:
        """Stop taking requests and wait (up to ``timeout``) for those being handled."""
        self._stop_listening()
        with self._idle:
            self._draining = True
            self._idle.wait_for(lambda: self._busy == 0, timeout)

    def close(self) -> None:
        self._closed = True
        if self._stop_listening():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def _peer_pid(conn: socket.socket) -> int:
    """The connected process's pid as the kernel reports it to this process (0: unknown,
    e.g. a client in another pid namespace)."""
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size)
    except OSError:
        return 0
    return int(_CREDS.unpack(creds)[0])


_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid


class EngineLink:
    """A client's connections to the engine: one per thread, so requests never interleave."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()

    def _sock(self) -> socket.socket:
        sock = getattr(self._local, "sock", None)
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.path))
            except OSError as exc:
                sock.close()
                raise EngineUnavailable(f"no engine at {self.path}: {exc}") from None
            self._local.sock = sock
        return sock

    def connected(self) -> bool:
        """Whether this thread holds a connection the engine accepted (reset on any error)."""
        return getattr(self._local, "sock", None) is not None

    def request(self, header: dict[str, Any], payload: bytes = b"") -> tuple[dict[str, Any], bytes]:
        try:
            sock = self._sock()
            send(sock, header, payload)
            return recv(sock)
        except (OSError, EngineUnavailable) as exc:
            self.reset()
            raise EngineUnavailable(str(exc)) from None

    def tell(self, header: dict[str, Any], payload: bytes = b"") -> None:
        """A one-way message (access records, hints): the engine never replies to it."""
        try:
            send(self._sock(), {**header, "oneway": True}, payload)
        except (OSError, EngineUnavailable) as exc:
            self.reset()
            raise EngineUnavailable(str(exc)) from None

    def reset(self) -> None:
        sock = getattr(self._local, "sock", None)
        self._local.sock = None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def forget(self) -> None:
        """After fork: the parent's sockets must not be used (or closed) by the child."""
        self._local = threading.local()


def dump_origin(fs: Any) -> bytes:
    """An origin filesystem as bytes the engine can rebuild it from (fsspec pickles by args)."""
    return pickle.dumps(fs)


def load_origin(blob: bytes) -> Any:
    return pickle.loads(blob)  # noqa: S301 - only our own user can reach the socket
