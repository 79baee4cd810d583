"""Reading a key from the node that owns it: kept-alive HTTP, received straight into a tier.

The answer's body is read into the mapping of a temporary blob file in this node's admission
tier (when the blob is a file there and the tier does not compress), so the bytes cross
memory once on their way in, and the engine publishes that very file with a rename. The
CRC32 is computed while each chunk is still in the CPU's cache, and compared with the one
the owner sent (the checksum the owner's tier recorded from the origin); a mismatch, a
short body or a version other than the one we know to be current is never kept.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import queue
import socket
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

from ..tiers.store import StagingFile
from . import protocol as p
from .ring import Member

#: Bytes read (and hashed) per step while receiving a body.
CHUNK = 1 << 20


@dataclass
class Received:
    """A peer's answer, checked: in a staged tier file, or in a buffer."""

    data: bytes | bytearray | memoryview  # empty when ``staging`` holds them
    size: int
    version: str
    fetched_at: float
    crc32: int
    #: The staged blob file holding ``data`` (None when it came into a buffer).
    staging: StagingFile | None
    #: "hit" if the owner had it cached, "miss" if it read the origin for us.
    state: str


#: (blob id, size) -> a staging file to receive into, or None for a plain buffer.
Sink = Callable[[int], StagingFile | None]


class PeerClient:
    """A few kept-alive connections per peer, and the request that reads one blob."""

    def __init__(self, timeout: float, per_peer: int, self_address: Callable[[], str]) -> None:
        self.timeout = timeout
        self.per_peer = per_peer
        self._self_address = self_address
        self._pools: dict[str, queue.LifoQueue[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._local = threading.local()

    # -- connections ---------------------------------------------------------------------------
    def _pool(self, address: str) -> queue.LifoQueue[http.client.HTTPConnection]:
        if self._pid != os.getpid():  # a forked child: the parent's connections are not ours
            inherited, self._pools = self._pools, {}
            for old in inherited.values():  # closes only the child's descriptors
                while not old.empty():
                    with contextlib.suppress(queue.Empty, OSError):
                        old.get_nowait().close()
            self._lock = threading.Lock()
            self._pid = os.getpid()
        with self._lock:
            found = self._pools.get(address)
            if found is None:
                found = self._pools[address] = queue.LifoQueue()
            return found

    def _connect(self, address: str) -> tuple[http.client.HTTPConnection, bool]:
        """A connection to ``address``: (connection, whether it was kept from before)."""
        with contextlib.suppress(queue.Empty):
            return self._pool(address).get_nowait(), True
        host, _, port = address.rpartition(":")
        return http.client.HTTPConnection(host.strip("[]"), int(port), timeout=self.timeout), False

    def _release(self, address: str, conn: http.client.HTTPConnection) -> None:
        pool = self._pool(address)
        if pool.qsize() < self.per_peer:
            pool.put(conn)
        else:
            conn.close()

    def close(self) -> None:
        with self._lock:
            pools, self._pools = self._pools, {}
        for pool in pools.values():
            while True:
                try:
                    pool.get_nowait().close()
                except queue.Empty:
                    break

    # -- one blob ------------------------------------------------------------------------------
    def get(
        self, member: Member, key: str, origin_spec: str, want_version: str | None, sink: Sink
    ) -> Received:
        """The whole blob of ``key`` from ``member``; raises :class:`PeerError` otherwise."""
        headers = {
            "Authorization": f"Bearer {member.token}",
            p.ORIGIN: origin_spec,
            p.NODE: self._self_address(),
        }
        if want_version:
            headers[p.WANT_VERSION] = want_version
        target = f"{p.BLOB}?key={quote(key, safe='')}"
        for attempt in range(2):
            conn, kept = self._connect(member.address)
            try:
                conn.request("GET", target, headers=headers)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if kept and attempt == 0 and not isinstance(exc, socket.timeout):
                    continue  # the peer closed a kept-alive connection (idle, restarted)
                raise _down(member, exc) from None
            try:
                return self._receive(member, key, resp, conn, want_version, sink)
            except BaseException:
                conn.close()
                raise
        raise p.PeerError(f"{member.address}: no answer", "error", down=True)  # pragma: no cover

    def _receive(
        self,
        member: Member,
        key: str,
        resp: http.client.HTTPResponse,
        conn: http.client.HTTPConnection,
        want_version: str | None,
        sink: Sink,
    ) -> Received:
        if resp.status != 200:
            body = resp.read(4096).decode(errors="replace")
            reason = resp.headers.get(p.REASON, "")
            result = {401: "refused", 404: "not_found"}.get(resp.status, "error")
            raise p.PeerError(
                f"{member.address} answered {resp.status} for {key} ({reason}): {body}", result
            )
        try:
            size = int(resp.headers["Content-Length"])
            expected = int(resp.headers[p.CRC32], 16)
            version = resp.headers[p.VERSION]
            fetched_at = float(resp.headers.get(p.FETCHED_AT) or 0.0)
        except (KeyError, TypeError, ValueError) as exc:
            raise p.PeerError(f"{member.address}: answer for {key} lacks {exc}", "error") from None
        state = "miss" if resp.headers.get(p.CACHE) == "miss" else "hit"  # a metrics label
        staging = sink(size)
        buffer = bytearray(0 if staging is not None else size)
        try:
            if staging is not None:
                crc = _read_into_file(resp, staging, self._chunk(), member, key)
            else:
                crc = _read_body(resp, memoryview(buffer), member, key)
        except BaseException:
            if staging is not None:
                staging.discard()
            raise
        self._release(member.address, conn)
        if crc != expected or (want_version is not None and version != want_version):
            if staging is not None:
                staging.discard()
            what = "checksum" if crc != expected else f"version {version} (want {want_version})"
            raise p.PeerError(f"{member.address}: {key} failed its {what} check", "corrupt")
        return Received(buffer, size, version, fetched_at, crc, staging, state)

    def _chunk(self) -> memoryview:
        """This thread's receive buffer, reused: warm memory takes a copy several times
        faster than fresh pages."""
        chunk = getattr(self._local, "chunk", None)
        if chunk is None:
            chunk = self._local.chunk = memoryview(bytearray(CHUNK))
        return chunk

    def suspect(self, member: Member, key: str) -> None:
        """Tell the owner its copy of ``key`` failed our check, so it re-verifies it."""
        conn, _ = self._connect(member.address)
        try:
            conn.request("POST", f"{p.SUSPECT}?key={quote(key, safe='')}",
                         headers={"Authorization": f"Bearer {member.token}",
                                  "Content-Length": "0"})  # fmt: skip
            conn.getresponse().read()
            self._release(member.address, conn)
        except (OSError, http.client.HTTPException):
            conn.close()


def _read_body(resp: http.client.HTTPResponse, view: memoryview, member: Member, key: str) -> int:
    """Fill ``view`` from the body, hashing each chunk as it lands; returns the CRC32."""
    crc = 0
    got = 0
    size = len(view)
    try:
        while got < size:
            n = resp.readinto(view[got : got + CHUNK])
            if not n:
                break
            crc = zlib.crc32(view[got : got + n], crc)
            got += n
    except (OSError, http.client.HTTPException) as exc:
        raise _down(member, exc) from None
    _check_length(got, size, member, key)
    return crc


def _read_into_file(
    resp: http.client.HTTPResponse, staging: StagingFile, chunk: memoryview, member: Member,
    key: str,
) -> int:  # fmt: skip
    """Stream the body through ``chunk`` into the staged file; returns its CRC32."""
    crc = 0
    got = 0
    size = staging.size
    while got < size:
        try:
            n = resp.readinto(chunk[: min(CHUNK, size - got)])
        except (OSError, http.client.HTTPException) as exc:
            raise _down(member, exc) from None
        if not n:
            break
        part = chunk[:n]
        crc = zlib.crc32(part, crc)
        try:
            staging.write(part)
        except OSError as exc:  # this node's disk (full?): not the peer's fault
            raise p.PeerError(f"cannot stage {key} here: {exc}", "error") from None
        got += n
    _check_length(got, size, member, key)
    return crc


def _check_length(got: int, size: int, member: Member, key: str) -> None:
    if got != size:
        raise p.PeerError(
            f"{member.address}: body of {key} ended at {got} of {size} bytes", "error", down=True
        )


def _down(member: Member, exc: BaseException) -> p.PeerError:
    result = "timeout" if isinstance(exc, (socket.timeout, TimeoutError)) else "error"
    return p.PeerError(f"{member.address}: {type(exc).__name__}: {exc}", result, down=True)
