"""Node-wide counters: every process counts into its own mapped file; readers sum them all.

Hits happen in whichever process reads (a DataLoader worker, a second rank, a FUSE daemon),
so counting only in the engine or only in the process serving metrics would show a fraction
of the truth. Each process owns one small file of 64-bit slots under the index directory and
is its only writer, so no cross-process locking is needed; a reader sums every file. Files
of processes that have exited are folded into ``retired`` so the directory stays small.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import mmap
import os
import secrets
import threading
from pathlib import Path

from .security import ensure_private_dir

log = logging.getLogger("tiercache.counters")

MAX_TIERS = 8
SLOTS = 1024
_FILE_BYTES = SLOTS * 8

#: Counters kept once per tier (slot = base + tier index).
PER_TIER = (
    "hits",  # requests answered by this tier
    "bytes_read",  # bytes served from this tier
    "evictions",  # entries that left this tier for good
    "demotions",  # entries moved from this tier to the next slower one
    "promotions",  # entries moved from this tier to the next faster one
    "admissions",  # misses stored into this tier
    "bypass_full",  # admissions skipped because the disk was full
    "invalidations",  # entries dropped because they were stale or corrupt
)
#: Counters kept once per node.
GLOBAL = (
    "misses",  # requests no tier answered
    "origin_reads",
    "origin_bytes",
    "origin_errors",
    "origin_retries",
    "origin_heads",
    "origin_lists",
    "origin_seconds_ns",
    "not_admitted",  # misses the policy declined to store
    "prefetch_issued",
    "prefetch_used",
    "prefetch_wasted",
    "singleflight_waits",
    "checksum_failures",
    "stale_refetches",  # cached objects found changed at the origin
    "data_wait_ns",  # time consumers spent waiting for bytes
    # One slot per origin request attempt by operation and outcome (``origin_request_slot``).
    "origin_get_ok",
    "origin_get_not_found",
    "origin_get_error",
    "origin_head_ok",
    "origin_head_not_found",
    "origin_head_error",
    "origin_list_ok",
    "origin_list_not_found",
    "origin_list_error",
    "read_verifications",  # disk-tier blobs hashed on the read path (shared node-wide)
    # Large objects larger than every tier, streamed through without being cached.
    "streamed_reads",  # reads of such objects
    "streamed_bytes",  # bytes of their blocks fetched for readers
    # [cluster]: reads a peer answered, the bytes received for them, bytes served to peers.
    "peer_hits",
    "peer_bytes",
    "peer_served_bytes",
    "peer_served",  # requests this node's peer server answered with bytes
)
#: Origin request operations and outcomes the ``origin_<op>_<status>`` slots cover.
ORIGIN_OPS = ("get", "head", "list")
ORIGIN_STATUSES = ("ok", "not_found", "error")
#: Histogram buckets of origin read latency (seconds, upper bounds; +Inf is implied).
ORIGIN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Counters of the write tier (``tiercache.write``); slots after the peer slots, so
#: adding them moved no older slot.
WRITE = (
    "uploads",  # journal operations carried to the origin (puts verified, deletes, copies)
    "uploaded_bytes",  # bytes of files verified durable at the origin
    "upload_part_bytes",  # bytes the origin acknowledged (parts and whole puts; resends too)
    "upload_failures",  # operations the origin refused for good (each time)
    "upload_retries",  # attempts that failed and were retried
    "staged_reads",  # reads served from staged files not yet uploaded
)
#: Histogram buckets of upload time (seconds from the first attempt to verified).
UPLOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)

#: Per-peer counters for ``tiercache_peer_*`` metrics: a peer is its position in the cluster's
#: sorted member list; members past the last slot share it (label "other").
PEER_SLOTS = 32
PEER_RESULTS = ("hit", "miss", "not_found", "error", "timeout", "refused", "corrupt")
PEER_DIRECTIONS = ("in", "out")

_SLOT: dict[str, int] = {}
for _i, _name in enumerate(PER_TIER):
    for _t in range(MAX_TIERS):
        _SLOT[f"{_name}:{_t}"] = _i * MAX_TIERS + _t
_base = len(PER_TIER) * MAX_TIERS
for _i, _name in enumerate(GLOBAL):
    _SLOT[_name] = _base + _i
_base += len(GLOBAL)
for _i in range(len(ORIGIN_BUCKETS) + 1):
    _SLOT[f"origin_bucket:{_i}"] = _base + _i
_base += len(ORIGIN_BUCKETS) + 1
for _p in range(PEER_SLOTS):
    for _name in PEER_RESULTS:
        _SLOT[f"peer_request:{_p}:{_name}"] = _base
        _base += 1
    for _name in PEER_DIRECTIONS:
        _SLOT[f"peer_bytes:{_p}:{_name}"] = _base
        _base += 1
for _i, _name in enumerate(WRITE + ("upload_seconds_ns",)):
    _SLOT[_name] = _base + _i
_base += len(WRITE) + 1
for _i in range(len(UPLOAD_BUCKETS) + 1):
    _SLOT[f"upload_bucket:{_i}"] = _base + _i
assert len(_SLOT) <= SLOTS


def slot(name: str, tier: int | None = None) -> int:
    return _SLOT[name if tier is None else f"{name}:{tier}"]


class Counters:
    """This process's counters for one cache, plus the node-wide sum of everyone's."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        ensure_private_dir(directory)
        self._lock = threading.Lock()
        self._view: memoryview | None = None
        self._fd = -1
        self._mm: mmap.mmap | None = None

    def _open_own(self) -> memoryview:
        name = f"proc-{os.getpid()}-{secrets.token_hex(4)}"
        tmp = self.dir / f".new-{name}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            # Allocate the blocks now: a sparse file on a full disk would SIGBUS the
            # process at its first count, through the mapping, instead of raising here.
            os.posix_fallocate(fd, 0, _FILE_BYTES)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                os.ftruncate(fd, _FILE_BYTES)  # no fallocate here (EOPNOTSUPP): sparse
            else:
                os.close(fd)
                with contextlib.suppress(OSError):
                    tmp.unlink()
                log.warning(
                    "no space for this process's counter file in %s; its counts stay "
                    "private to it (fs.stats() and metrics will not include them)",
                    self.dir,
                )
                self._view = memoryview(bytearray(_FILE_BYTES)).cast("Q")
                return self._view
        # A shared lock held for our lifetime says "alive" to whoever folds dead files. It is
        # taken before the file gets its proc- name: a folder must never see it unlocked,
        # or it would fold it as dead and unlink it under us, losing our counts.
        fcntl.flock(fd, fcntl.LOCK_SH)
        os.rename(tmp, self.dir / name)
        self._fd = fd
        self._mm = mmap.mmap(fd, _FILE_BYTES)
        self._view = memoryview(self._mm).cast("Q")
        return self._view

    def add(self, name: str, value: int = 1, tier: int | None = None) -> None:
        index = _SLOT[name if tier is None else f"{name}:{tier}"]
        with self._lock:
            view = self._view if self._view is not None else self._open_own()
            view[index] += value

    def observe_origin_seconds(self, seconds: float) -> None:
        self.add("origin_seconds_ns", int(seconds * 1e9))
        for i, bound in enumerate(ORIGIN_BUCKETS):
            if seconds <= bound:
                self.add(f"origin_bucket:{i}")
                return
        self.add(f"origin_bucket:{len(ORIGIN_BUCKETS)}")

    def observe_upload_seconds(self, seconds: float) -> None:
        self.add("upload_seconds_ns", int(seconds * 1e9))
        for i, bound in enumerate(UPLOAD_BUCKETS):
            if seconds <= bound:
                self.add(f"upload_bucket:{i}")
                return
        self.add(f"upload_bucket:{len(UPLOAD_BUCKETS)}")

    def snapshot(self) -> list[int]:
        """The node-wide sum of every slot.

        Holds ``fold.lock`` shared so a fold cannot run halfway through the reading: between
        its new ``retired`` and its unlinks a dead file would count twice, and the next
        snapshot would be lower, which Prometheus reads as a counter reset.
        """
        total = [0] * SLOTS
        lock_fd = os.open(self.dir / "fold.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_SH)
            for path in self.dir.iterdir():
                if not (path.name.startswith("proc-") or path.name == "retired"):
                    continue
                with contextlib.suppress(FileNotFoundError, ValueError):
                    data = path.read_bytes()
                    if len(data) == _FILE_BYTES:
                        for i, v in enumerate(memoryview(data).cast("Q")):
                            if v:
                                total[i] += v
        finally:
            os.close(lock_fd)
        return total

    def fold_dead(self) -> int:
        """Merge files of exited processes into ``retired``; returns how many were folded."""
        folded = 0
        lock_fd = os.open(self.dir / "fold.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            retired = self.dir / "retired"
            sums = list(memoryview(retired.read_bytes()).cast("Q")) if retired.exists() else None
            sums = sums if sums and len(sums) == SLOTS else [0] * SLOTS
            dead: list[Path] = []
            for path in self.dir.glob("proc-*"):
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its owner is alive
                finally:
                    os.close(fd)
                data = path.read_bytes()
                if len(data) == _FILE_BYTES:
                    for i, v in enumerate(memoryview(data).cast("Q")):
                        sums[i] += v
                dead.append(path)
            if dead:
                tmp = self.dir / f".retired-{secrets.token_hex(4)}"
                tmp.write_bytes(b"".join(v.to_bytes(8, "little") for v in sums))
                os.replace(tmp, retired)
                for path in dead:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                    folded += 1
        finally:
            os.close(lock_fd)
        return folded

    def after_fork(self) -> None:
        """The child must not write into the parent's file: it opens its own on first use."""
        if self._fd >= 0:
            os.close(self._fd)  # the parent keeps its own lock through its descriptor
        self._lock = threading.Lock()
        self._view = None
        self._mm = None
        self._fd = -1
