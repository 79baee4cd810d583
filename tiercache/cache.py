"""A process's handle on one node cache: the read path, and the link to the engine.

Every process that opens a cache gets one :class:`Cache` per index directory (see
:func:`open_cache`). Hits are served right here, from the tiers, with no round trip: look
the key up in the index, read the blob (one copy), verify its checksum. Misses, hints and
access records go to the engine, which runs in whichever process holds ``engine.lock``,
perhaps this one. If the engine's process dies, the next request elects a new one.

Fork safety: a forked child (a DataLoader worker) inherits this object but not the
engine's threads, and must not touch the parent's LMDB handles, sockets or counter file;
an at-fork hook resets all of them so the child starts as a plain client.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fsspec import AbstractFileSystem

from .blockfetch import OPS as block_ops
from .blockfetch import serve as serve_blocks
from .blocks import LargeObject
from .bounded import Bounded
from .config import Config
from .counters import Counters
from .engine import Engine
from .index import Entry, Index
from .ipc import EngineLink, EngineServer, EngineUnavailable, dump_origin, load_origin
from .localfs import refuse_network
from .origin import ObjectTooLarge, Origin, OriginChangedError, OriginError
from .security import ensure_private_dir
from .service import live_service
from .tiers.store import Buffer, CorruptBlobError, TierStore
from .verified import VerifiedTable
from .write.reads import staged_blob
from .write.staging import Staging

if TYPE_CHECKING:
    from .blockread import BlockReader

log = logging.getLogger("tiercache")

_ACCESS_BATCH = 256
_ACCESS_MAX_AGE = 0.1
#: An entry fetched less than this long ago whose first read reports at once.
_FRESH_SECONDS = 120.0


@dataclass
class Blob:
    """A located, verified object ready to be read: its entry and its bytes."""

    entry: Entry
    #: The whole object: bytes in hand (fresh from the origin, small, decompressed) or a
    #: view of the tier's shared mapping, which stays readable even if the engine evicts it.
    data: Buffer
    #: Fetched from the origin for this request: its bytes count as origin bytes, not as
    #: bytes a tier served, so ``bytes_read`` per tier says what the cache itself delivered.
    missed: bool = False


class Cache:
    """Read path and engine link for one cache directory, in this process."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._open()
        _LIVE.add(self)

    def _open(self) -> None:
        config = self.config
        if not config.allow_network_fs:
            refuse_network(config.index_path, "index.path")
            for tier in config.tiers:
                refuse_network(tier.path, f"tier {tier.name!r} path")
            if config.write is not None and config.write.enabled:
                refuse_network(config.write.path, "write.path")
        self.pid = os.getpid()
        self.index = Index(config.index_path, config.tier_names)
        self.stores = [TierStore(t) for t in config.tiers]
        self.counters = Counters(config.index_path / "stats")
        self.verified = VerifiedTable(config.index_path)
        self._always_verify = [t.verify == "always" for t in config.tiers]
        self._engine: Engine | None = None
        self._server: EngineServer | None = None
        self._lock_fd = -1
        self._link = EngineLink(config.index_path / "engine.sock")
        self._elect_lock = threading.RLock()
        #: Set by ``tiercache engine``: this process is the node's engine service.
        self.is_service = False
        self._access: list[list[Any]] = []
        self._access_since = time.monotonic()
        self._access_lock = threading.Lock()
        #: Engine side: origins clients sent us (the most recent few).
        self._origins: Bounded[bytes, Origin] = Bounded(64)
        self._blocks: BlockReader | None = None
        self._trace_fd = -1
        #: The write tier (``tiercache.write``): staged files and their journal; None when
        #: writes are off.
        self.staging: Staging | None = None
        if config.write is not None and config.write.enabled:
            self.staging = Staging(config.write, owner=str(config.index_path))
        self.verify_staged = self._always_verify[-1]
        if config.trace is not None:
            # Private like every cache path; never through a symlink someone planted.
            ensure_private_dir(config.trace.parent)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
            self._trace_fd = os.open(config.trace, flags, 0o600)

    # -- the read path ----------------------------------------------------------------------------
    @property
    def blocks(self) -> BlockReader:
        """Reads of large objects, block by block (``blockread.py``)."""
        reader = self._blocks
        if reader is None or reader.index is not self.index:  # a fork opened a new index
            from .blockread import BlockReader

            reader = self._blocks = BlockReader(self)
        return reader

    def locate(self, origin: Origin, path: str, *, pending: bool = True) -> Blob:
        """Find ``path`` in a tier, fetching it on a miss; counts one request.

        Always returns a verified blob or raises: FileNotFoundError for a missing object,
        OriginError when the origin is unreachable and nothing is cached, and
        :class:`~tiercache.blocks.LargeObject` for an object read as blocks. ``pending``:
        this node's writes not yet at the origin count (``tiercache.write.reads``). A write
        drops the key's entry when it is acknowledged, so only a key with no entry can have
        one: hits never look at the write journal.
        """
        key = origin.key(path)
        started = time.perf_counter()
        missed = False  # a remote engine stored it for us: served from a tier, still a miss
        try:
            for _ in range(4):
                entry = self.index.get(key)
                if entry is None and not missed and pending and self.staging is not None:
                    staged = staged_blob(self, origin, path, key)
                    if staged is not None:
                        return staged
                if entry is not None and (missed or self._fresh(origin, path, key, entry)):
                    blob = self._open_blob(entry)
                    if blob is not None:
                        if missed:
                            self.counters.add("misses")
                            blob.missed = True
                        else:
                            self.counters.add("hits", tier=entry.tier)
                            self._record_access(entry)
                        self._trace(key, entry.size, None if missed else entry.tier)
                        return blob
                    continue  # moved or repaired while we looked: look again
                if entry is None and not missed:
                    self.blocks.route(origin, path, key)  # raises LargeObject: read as blocks
                try:
                    blob = self._miss(origin, path, key, want_data=missed)
                except ObjectTooLarge:
                    self.blocks.too_large(origin, path)  # raises LargeObject
                    continue  # it is small again: fetch it whole
                missed = True
                if blob is not None:
                    self.counters.add("misses")
                    blob.missed = True
                    self._trace(key, blob.entry.size, None)
                    return blob
            raise OSError(f"{key}: the cache kept changing under this read; giving up")
        finally:
            self.counters.add("data_wait_ns", int((time.perf_counter() - started) * 1e9))

    def _trace(self, key: str, size: int, tier: int | None) -> None:
        """Append one request to the access log (``trace`` in the config), for ``simulate``.

        One ``write`` per line on an O_APPEND descriptor: lines from many processes never
        interleave.
        """
        if self._trace_fd < 0:
            return
        from .simulate import access_log_line

        name = None if tier is None else self.config.tier_names[tier]
        os.write(
            self._trace_fd, access_log_line(time.time(), key, size, name, tier is not None).encode()
        )

    def read(
        self, origin: Origin, path: str, start: int | None = None, end: int | None = None
    ) -> bytes:
        """Whole object or ``[start, end)`` (negative values count from the end, as fsspec)."""
        try:
            blob = self.locate(origin, path)
        except LargeObject as large:
            return self.blocks.read_object(origin, path, large.obj, start, end)
        size = blob.entry.size
        s, e = _resolve_range(start, end, size)
        whole = blob.data if (s, e) == (0, size) else blob.data[s:e]
        # Callers get bytes: from a shared mapping that is the one copy; a fetch's buffer (a
        # bytearray, fresh from the origin) is copied too, an origin read's cost anyway.
        data = whole if isinstance(whole, bytes) else bytes(whole)
        if blob.entry.tier >= 0 and not blob.missed:  # a miss's bytes count as origin bytes
            self.counters.add("bytes_read", len(data), tier=blob.entry.tier)
        return data

    def _open_blob(self, entry: Entry) -> Blob | None:
        store = self.stores[entry.tier]
        try:
            if entry.blob.small or entry.blob.compressed:
                return Blob(entry, store.get(entry.blob_id, entry.blob))
            verify = self._always_verify[entry.tier]
            ttl = self.config.tiers[entry.tier].verify_ttl_seconds
            if verify and self.verified.fresh(entry.blob_id, entry.blob, ttl):
                verify = False  # another process on the node hashed this very file lately
            view = store.mapped(entry.blob_id, entry.blob, verify=verify)
            if verify:
                self.counters.add("read_verifications")
                if ttl > 0:
                    self.verified.record(entry.blob_id, entry.blob)
            return Blob(entry, view)
        except FileNotFoundError:
            if store.wiped():
                store.reopen()
            current = self.index.get(entry.key)
            if current is not None and (current.tier, current.blob) == (entry.tier, entry.blob):
                # Not moved by the engine (that changes the entry first): the file is gone
                # under a live entry, e.g. a job epilogue wiped /dev/shm. Drop the entry;
                # the caller's next look finds none and refetches.
                log.warning(
                    "%s: its blob in tier %s is gone; refetching", entry.key, store.config.name
                )
                self.engine_call("invalidate", key=entry.key)
            return None
        except CorruptBlobError as exc:
            log.warning("%s: %s; refetching from the origin", entry.key, exc)
            self.counters.add("checksum_failures")
            self.engine_call("invalidate", key=entry.key)
            return None

    def _fresh(self, origin: Origin, path: str, key: str, entry: Entry) -> bool:
        """Whether the cached copy may be served under the ``[validation]`` rules.

        ``ttl``: an entry fetched or validated by any process less than ``ttl_seconds`` ago
        (``fetched_at`` in the index) is fresh; an older one is validated by the engine,
        once for the whole node, which records the time in the index for every process.
        ``always``: every open asks the origin, from this process.
        """
        mode = self.config.validation.mode
        if mode == "never" or origin.config.offline:
            return True
        if mode == "ttl":
            if 0 <= time.time() - entry.fetched_at < self.config.validation.ttl_seconds:
                return True
            return self._validated_by_engine(origin, path)
        try:
            current: str | None = _version_of(origin, path)
        except OriginError:
            return True  # an unreachable origin still serves what is cached
        except FileNotFoundError:
            current = None
        if current == entry.version:
            return True
        log.info("%s changed at the origin (%s -> %s); refetching", key, entry.version, current)
        self.counters.add("stale_refetches")
        self.engine_call("invalidate", key=key)
        return False

    def _validated_by_engine(self, origin: Origin, path: str) -> bool:
        engine = self._local_engine()
        if engine is not None:
            return engine.validate(origin, path)
        if origin.pickled is None:
            origin.pickled = dump_origin(origin.fs)
        reply, _ = self.engine_call("validate", _payload=origin.pickled, path=origin.strip(path))
        return bool(reply["fresh"])

    def _miss(self, origin: Origin, path: str, key: str, want_data: bool) -> Blob | None:
        """Have the engine fetch ``path``. Returns the bytes in hand, or None when they are
        now in a tier (a remote engine stored them; the caller looks them up).

        ``want_data`` asks a remote engine to send the bytes back too: used when an object
        was evicted again between the engine storing it and this process reading it.
        """
        engine = self._local_engine()
        if engine is not None:
            result = engine.fetch(origin, path)
            if result.entry is None:
                return Blob(_uncached_entry(key, result.data), result.data)
            return Blob(result.entry, result.data)
        if origin.pickled is None:
            origin.pickled = dump_origin(origin.fs)
        reply, payload = self.engine_call(
            "fetch", _payload=origin.pickled, path=origin.strip(path), want_data=want_data
        )
        if reply["status"] == "data":
            return Blob(_uncached_entry(key, payload), payload)
        return None

    def _record_access(self, entry: Entry) -> None:
        engine = self._engine  # reset to None in a forked child by the at-fork hook
        if engine is not None:
            engine.record_access(entry.blob_id, entry.tier, entry.blob.stored_size)
            return
        with self._access_lock:
            self._access.append([entry.blob_id, entry.tier, entry.blob.stored_size])
            due = (
                len(self._access) >= _ACCESS_BATCH
                or time.monotonic() - self._access_since > _ACCESS_MAX_AGE
                # The first read of a fresh entry (often a prefetched one) goes at once: the
                # prefetcher's budget is freed, and clairvoyant policies step, by reads. Only
                # fresh ones: in a large cache most entries have never been read since the
                # engine last flushed hits, and a message per hit halved hits per second.
                or (entry.hits == 0 and time.time() - entry.fetched_at < _FRESH_SECONDS)
            )
            if not due:
                return
            records, self._access = self._access, []
            self._access_since = time.monotonic()
        # Access records only steer the policy; losing a batch to an engine hand-over is fine.
        with contextlib.suppress(EngineUnavailable, OSError):
            self.engine_call("access", _oneway=True, records=records)

    def flush_access(self) -> None:
        with self._access_lock:
            records, self._access = self._access, []
        if records:
            with contextlib.suppress(EngineUnavailable, OSError):
                self.engine_call("access", _oneway=True, records=records)

    # -- hints and warm-up ------------------------------------------------------------------------
    def hint(
        self,
        origin: Origin,
        paths: Sequence[str],
        stream: str = "",
        cluster: Sequence[str] | None = None,
    ) -> None:
        """This process's upcoming reads (``stream`` tells apart several plans of one
        process); the engine merges them with every other reader's on the node.
        ``cluster``: every node's reads in the cluster's order (see ``Engine.hint``)."""
        stripped = [origin.strip(p) for p in paths]
        everyone = None if cluster is None else [origin.strip(p) for p in cluster]
        engine = self._local_engine()
        name = f"{os.getpid()}:{stream}"
        if engine is not None:
            engine.hint(origin, stripped, (os.getpid(), name), everyone)
        else:
            if origin.pickled is None:
                origin.pickled = dump_origin(origin.fs)
            extra = {} if everyone is None else {"cluster": everyone}
            self.engine_call(
                "hint", _oneway=True, _payload=origin.pickled, paths=stripped, stream=name, **extra
            )

    # -- the engine: here, or reached over the socket -------------------------------------------
    def _local_engine(self) -> Engine | None:
        """The engine if this process runs it (electing this process if nobody does)."""
        if self.pid != os.getpid():
            self._after_fork()
        if self._engine is not None:
            return self._engine
        if self._link.connected():
            # An engine accepted this thread's connection and nothing has failed on it since
            # (any error resets it): it runs elsewhere. Pinging it on every call instead cost
            # each worker a round trip, and the GIL of a busy training process, per hit.
            return None
        with contextlib.suppress(EngineUnavailable):
            self._link.request({"op": "ping"})
            return None
        self._elect()
        return self._engine

    def _elect(self, timeout: float = 60.0) -> None:
        """Become the engine if nobody holds the lock; otherwise wait until one answers.

        Waiting keeps trying the lock too: an engine that hands over (exits, drains, dies)
        releases it, and one of the waiting processes must pick it up. While a live engine
        service is announced (``tiercache engine``, see ``service.py``), the lock is left
        to it: clients wait for its socket instead.
        """
        deadline = time.monotonic() + timeout
        with self._elect_lock:
            while self._engine is None:
                service = live_service(self.config.index_path)
                if service is None:
                    fd = _try_lock(self.config.index_path / "engine.lock")
                    if fd is not None:
                        self._become_engine(fd)
                        return
                with contextlib.suppress(EngineUnavailable):
                    self._link.request({"op": "ping"})
                    return
                if time.monotonic() > deadline:
                    who = f"the engine service (pid {service})" if service else "no engine"
                    raise EngineUnavailable(
                        f"{who} answered for {self.config.index_path} in {timeout:.0f} s"
                    ) from None
                time.sleep(0.02)

    def take_over(self, timeout: float = 60.0) -> None:
        """Become the engine even if another process is it now (``tiercache engine``).

        An embedded engine is asked to hand over: it finishes the requests it is serving,
        releases the lock and carries on as a client. Raises EngineUnavailable if the lock
        is not free within ``timeout`` (the holder refused, or hangs).
        """
        deadline = time.monotonic() + timeout
        lock_path = self.config.index_path / "engine.lock"
        refusal = ""
        with self._elect_lock:
            while self._engine is None:
                fd = _try_lock(lock_path)
                if fd is not None:
                    self._become_engine(fd)
                    return
                if not refusal:
                    with contextlib.suppress(EngineUnavailable):
                        reply, _ = self._link.request({"op": "handover"})
                        if reply.get("status") == "error":
                            refusal = reply.get("message", "refused")
                    self._link.reset()
                if time.monotonic() > deadline:
                    why = f": {refusal}" if refusal else ""
                    raise EngineUnavailable(
                        f"the engine of {self.config.index_path} did not hand over in "
                        f"{timeout:.0f} s{why}"
                    )
                time.sleep(0.05)

    def _become_engine(self, lock_fd: int) -> None:
        os.set_inheritable(lock_fd, False)
        self._lock_fd = lock_fd
        self._engine = Engine(
            self.config, self.index, self.stores, self.counters, self.verified, self.staging
        )
        self._server = EngineServer(self.config.index_path / "engine.sock", self._serve)
        log.debug("process %d is the engine for %s", os.getpid(), self.config.index_path)

    def _resign(self, wait: bool = True) -> None:
        """Stop being the engine: requests being served finish, new ones are turned away
        (clients wait for the next engine), then the lock is released. This process stays
        a client of whoever takes over. ``wait``: let this process's own fetches in
        flight finish first (a hand-over; at exit they are simply abandoned)."""
        if self._server is not None:
            self._server.drain()
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.close(wait=wait)
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def engine_call(
        self, op: str, _payload: bytes = b"", _oneway: bool = False, **fields: Any
    ) -> tuple[dict[str, Any], Buffer]:
        """Send one request to the engine, wherever it runs; re-elect if it died."""
        header = {"op": op, **fields}
        for attempt in range(8):
            engine = self._local_engine()
            if engine is not None:
                local = self._serve(header, _payload)
                return local if local is not None else ({"status": "ok"}, b"")
            try:
                if _oneway:
                    self._link.tell(header, _payload)
                    return {"status": "ok"}, b""
                reply, payload = self._link.request(header, _payload)
            except EngineUnavailable:
                time.sleep(0.01 * (attempt + 1))
                continue
            if reply.get("status") == "draining":  # the engine is handing over: wait for the next
                self._link.reset()
                self._elect()
                continue
            if reply.get("status") == "error":
                raise _rebuild_error(reply)
            return reply, payload
        raise EngineUnavailable(f"no engine answered for {self.config.index_path}")

    def _serve(
        self, header: dict[str, Any], payload: bytes
    ) -> tuple[dict[str, Any], Buffer] | None:
        """The engine side of :meth:`engine_call`."""
        engine = self._engine
        if engine is None:
            raise EngineUnavailable("this process no longer runs the engine")
        op = header["op"]
        if op == "ping":
            return {"status": "ok", "pid": os.getpid()}, b""
        if op == "handover":
            if self.is_service:
                raise RuntimeError(
                    f"the engine service (pid {os.getpid()}) does not hand over; stop it first"
                )
            threading.Thread(target=self._resign, name="tiercache-handover", daemon=True).start()
            return {"status": "ok"}, b""
        if op == "access":
            for blob_id, tier, size in header["records"]:
                engine.record_access(blob_id, tier, size)
            return None
        if op == "uploads":  # a writer staged something: the uploader looks now
            if engine.uploader is not None:
                engine.uploader.wake()
            return None
        if op == "upload_early":  # a writer has more whole parts of a file still open
            if engine.uploader is not None:
                engine.uploader.early(
                    header["token"], header["key"], header["path"], header["origin"],
                    header["written"],
                )  # fmt: skip
            return None
        if op == "upload_abandon":
            if engine.uploader is not None:
                engine.uploader.abandon(header["token"])
            return None
        if op == "uploads_retry":
            retried = engine.uploader.retry_failed() if engine.uploader is not None else 0
            return {"status": "ok", "retried": retried}, b""
        if op == "invalidate":
            engine.invalidate(header["key"])
            return {"status": "ok"}, b""
        if op == "verify":
            return {"status": "ok", "report": engine.verify(bool(header.get("repair")))}, b""
        if op == "clear":
            return {"status": "ok", "report": engine.clear(header.get("tier"))}, b""
        if op.startswith("cluster_"):  # membership requests (tiercache.cluster.discovery)
            if engine.cluster is None:
                raise ValueError("this cache's config has no [cluster] table")
            return {"status": "ok", **engine.cluster.request(header)}, b""
        origin = self._origin_from(payload)
        if op in block_ops:
            return serve_blocks(engine, op, header, origin)
        if op == "hint":
            # The sender's pid as this process sees it (0 across pid namespaces): the stream
            # stops counting when that process dies.
            stream = (int(header.get("peer_pid", 0)), str(header.get("stream", "")))
            engine.hint(origin, header["paths"], stream, header.get("cluster"))
            return None
        if op == "validate":
            return {"status": "ok", "fresh": engine.validate(origin, header["path"])}, b""
        if op == "fetch":
            result = engine.fetch(origin, header["path"])
            if result.entry is None or header.get("want_data"):
                return {"status": "data"}, result.data
            return {"status": "cached"}, b""
        raise ValueError(f"unknown engine request {op!r}")

    def _origin_from(self, payload: bytes) -> Origin:
        origin = self._origins.get(payload)
        if origin is None:
            origin = self.origin_for(load_origin(payload))
            self._origins[payload] = origin
        return origin

    def origin_for(self, fs: AbstractFileSystem) -> Origin:
        return Origin(
            fs,
            self.config.origin,
            self.counters,
            self.config.validation.ttl_seconds,
            listing_dir=self.config.index_path / "listings",
        )

    # -- lifecycle --------------------------------------------------------------------------------
    def close(self, wait: bool = False) -> None:
        """Hand the engine over (if this process runs it) and release handles.

        Requests already being served finish first: new ones are turned away, clients wait
        for the lock, and the first to get it becomes the next engine. Nothing in flight is
        lost or read twice. ``wait``: this process's own fetches in flight finish too.
        """
        _LIVE.discard(self)  # a closed cache is not reopened in forked children
        self.flush_access()
        self._resign(wait=wait)
        self._link.reset()

    def drain_uploads(self) -> None:
        """At exit, in the process that runs the engine: wait (up to ``[write]
        exit_wait_seconds``) for pending uploads, so that a job's last checkpoint is in the
        origin when it ends. Whatever is left stays staged; the next engine resumes it."""
        engine = self._engine if self.pid == os.getpid() else None
        write = self.config.write
        if engine is None or engine.uploader is None or write is None:
            return
        if not write.exit_wait_seconds:
            return
        with contextlib.suppress(Exception):
            left = engine.uploader.wait_idle(write.exit_wait_seconds, progress=True)
            if left:
                log.warning(
                    "exiting with %d write(s) not yet at the origin; they stay staged in %s "
                    "and the next engine (any process opening this cache, or `tiercache "
                    "engine`) uploads them", len(left), write.path,
                )  # fmt: skip

    def _after_fork(self) -> None:
        """Runs in a forked child: drop everything that belongs to the parent."""
        if self.pid == os.getpid():
            return
        self.index.abandon()
        self.verified.abandon()
        for store in self.stores:
            store.abandon()
        self.counters.after_fork()
        if self.staging is not None:
            self.staging.abandon()
        self._link.forget()
        if self._lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
        if self._server is not None:
            with contextlib.suppress(OSError):
                os.close(self._server.sock.detach())
        self._open()

    @property
    def is_engine(self) -> bool:
        return self._engine is not None and self.pid == os.getpid()

    @property
    def engine(self) -> Engine | None:
        return self._local_engine()


def _try_lock(path: Path) -> int | None:
    """An exclusive flock on ``path``: its descriptor, or None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _version_of(origin: Origin, path: str) -> str:
    from .origin import object_version

    return object_version(origin.info(path, refresh=True))


def _uncached_entry(key: str, data: Buffer) -> Entry:
    from .tiers.store import BlobMeta

    return Entry(key, -1, len(data), BlobMeta(len(data), 0, False, False), "")


def _resolve_range(start: int | None, end: int | None, size: int) -> tuple[int, int]:
    s = 0 if start is None else (max(0, size + start) if start < 0 else min(start, size))
    e = size if end is None else (max(0, size + end) if end < 0 else min(end, size))
    return s, max(s, e)


def _rebuild_error(reply: dict[str, Any]) -> Exception:
    """Re-raise an engine-side error in the client with its original type where safe."""
    kinds: dict[str, type[Exception]] = {
        "FileNotFoundError": FileNotFoundError,
        "IsADirectoryError": IsADirectoryError,
        "PermissionError": PermissionError,
        "OriginError": OriginError,
        "OriginChangedError": OriginChangedError,
        "ObjectTooLarge": ObjectTooLarge,
        "ValueError": ValueError,
    }
    return kinds.get(reply.get("type", ""), OSError)(reply.get("message", "engine error"))


# -- one Cache per index directory per process -------------------------------------------------
_LIVE: weakref.WeakSet[Cache] = weakref.WeakSet()
_CACHES: dict[Path, Cache] = {}
_CACHES_LOCK = threading.Lock()


def open_cache(config: Config) -> Cache:
    """The process-wide :class:`Cache` for ``config``'s index directory."""
    with _CACHES_LOCK:
        cache = _CACHES.get(config.index_path)
        created = cache is None
        if cache is None:
            cache = _CACHES[config.index_path] = Cache(config)
        elif cache.config.tiers != config.tiers:
            raise ValueError(
                f"cache at {config.index_path} is already open with different tiers "
                f"({cache.config.source} vs {config.source}); give each config its own "
                "index.path"
            )
    if created and config.cluster is not None and config.cluster.discovery == "torch":
        from .cluster.discovery import join_under_torchrun

        join_under_torchrun(cache)  # local rank 0 publishes this node's engine (may wait)
    return cache


def close_all() -> None:
    """Close every cache this process opened (engine hand-over happens on exit too)."""
    with _CACHES_LOCK:
        for cache in list(_CACHES.values()):
            cache.drain_uploads()
            cache.close()
        _CACHES.clear()


#: Bumped in every forked child, so objects can notice a fork without a getpid() system call
#: on every read (it costs microseconds on some virtual machines).
FORKS = 0


def _reset_in_child() -> None:
    global _CACHES_LOCK, FORKS
    FORKS += 1
    _CACHES_LOCK = threading.Lock()
    for cache in list(_LIVE):
        with contextlib.suppress(Exception):
            cache._after_fork()


os.register_at_fork(after_in_child=_reset_in_child)
# A normal exit hands the engine over cleanly: requests in flight finish first. This must run
# before concurrent.futures refuses new work at shutdown (s3fs resolves names through an
# executor), which plain ``atexit`` is too late for; threading's exit hooks run in reverse
# order of registration, so ours, registered after concurrent.futures', runs first.
_register_exit = getattr(threading, "_register_atexit", atexit.register)
_register_exit(close_all)
