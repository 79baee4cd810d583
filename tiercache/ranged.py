"""Ranged reads of one version of an object: what block caching fetches with.

A large object is read as many ranged GETs, every one pinned to the version first seen
(``If-Match`` on its ETag, or its version id), so blocks of two versions never mix: a
changed object raises :class:`~tiercache.origin.OriginChangedError`. Each GET has no time
limit as a whole, only on progress (``progress_timeout_seconds`` without a byte), so an
object takes as long as the bandwidth needs, and a stalled connection is retried.

S3 is read through :mod:`tiercache.s3direct` (presigned URL, ``http.client`` receiving
straight into the destination); what that path does not handle goes through s3fs. Other
fsspec origins are read with ``cat_file(path, start, end)`` and their version checked
after each read (a ``stat`` for local files).
"""

from __future__ import annotations

import base64
import os
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .origin import (
    Origin,
    OriginChangedError,
    OriginIntegrityError,
    _is_s3,
    object_version,
)
from .s3direct import Unsupported, VersionMismatch


@dataclass(frozen=True)
class Head:
    """What the origin says about an object before any of its bytes are read."""

    size: int
    version: str  # as ``object_version`` writes it: validation compares listings with it
    etag: str  # without quotes; "" when the origin has none
    version_id: str  # S3 version id; "" when the bucket keeps none
    crc32: int | None  # the whole object's CRC32, where the origin keeps one


def head(origin: Origin, path: str) -> Head:
    """The object's size, version and whole-object checksum: one HEAD (a stat for files)."""
    path = origin.strip(path)
    origin.counters.add("origin_heads")
    if not _is_s3(origin.fs):
        info = origin.call("info", path, lambda: origin._run("info", path))
        if info.get("type") == "directory":
            raise IsADirectoryError(f"{origin.key(path)} is a directory")
        return Head(int(info["size"]), object_version(info), "", "", None)
    from fsspec.asyn import sync

    fs = origin.fs
    bucket, key, version_id = fs.split_path(path)
    if not key:
        raise IsADirectoryError(f"s3://{path} is a bucket, not an object")
    extra = {"VersionId": version_id} if version_id else {}

    async def ask() -> dict[str, Any]:
        return dict(
            await fs._call_s3(
                "head_object", Bucket=bucket, Key=key, ChecksumMode="ENABLED", **extra
            )
        )

    resp = origin.call("info", path, lambda: sync(fs.loop, ask, timeout=origin.remaining()))
    size = int(resp["ContentLength"])
    etag = str(resp.get("ETag", "")).strip('"')
    vid = str(resp.get("VersionId") or version_id or "")
    return Head(size, f"{size}:{etag}", etag, "" if vid == "null" else vid, _full_crc32(resp))


def _full_crc32(resp: dict[str, Any]) -> int | None:
    """The object's CRC32 when S3 keeps one for the whole object (not per part)."""
    crc = str(resp.get("ChecksumCRC32") or "")
    if not crc or "-" in crc or resp.get("ChecksumType", "FULL_OBJECT") != "FULL_OBJECT":
        return None
    return int.from_bytes(base64.b64decode(crc), "big")


@dataclass(frozen=True)
class Pin:
    """The version every ranged read of one object must match."""

    path: str
    size: int
    version: str
    etag: str
    version_id: str


def read_span(
    origin: Origin, pin: Pin, span: tuple[int, int], into: memoryview, expected: int | None
) -> int:
    """Bytes ``span`` of the pinned version into ``into``; returns their CRC32.

    ``expected``: the CRC32 these bytes had when the whole object was last verified; a body
    that differs (a bit flipped on the way) is retried, never returned. Retries, backoff and
    error counting are the origin's (:meth:`Origin.call`).
    """
    path = origin.strip(pin.path)
    url = origin.key(path)

    def attempt() -> int:
        _read_once(origin, pin, path, span, into)
        crc = zlib.crc32(into)
        if expected is not None and crc != expected:
            raise OriginIntegrityError(
                f"{url}: bytes {span[0]}-{span[1] - 1} have CRC32 {crc:08x}, "
                f"{expected:08x} when the object was verified"
            )
        return crc

    started = time.perf_counter()
    crc = origin.call("read", path, attempt)
    origin.counters.observe_origin_seconds(time.perf_counter() - started)
    origin.counters.add("origin_reads")
    origin.counters.add("origin_bytes", span[1] - span[0])
    return crc


def _read_once(
    origin: Origin, pin: Pin, path: str, span: tuple[int, int], into: memoryview
) -> None:
    url = origin.key(path)
    if not _is_s3(origin.fs):
        data = origin._run("cat_file", path, start=span[0], end=span[1])
        now = object_version(origin._run("info", path))
        if now != pin.version or len(data) != span[1] - span[0]:
            raise OriginChangedError(f"{url} changed while being read ({pin.version} -> {now})")
        into[:] = data
        return
    direct = origin.direct
    if direct is not None:
        bucket, key, _ = direct.fs.split_path(path)
        try:
            direct.get_range(
                bucket,
                key,
                pin.version_id or None,
                span,
                pin.size,
                pin.etag,
                into,
                origin.config.progress_timeout_seconds,
            )
            return
        except VersionMismatch as exc:
            raise OriginChangedError(str(exc)) from None
        except Unsupported:
            pass  # this request goes through s3fs below
    _s3fs_range(origin, pin, path, span, into)


def _s3fs_range(
    origin: Origin, pin: Pin, path: str, span: tuple[int, int], into: memoryview
) -> None:
    """One pinned ranged GET through s3fs (requester-pays, SSE-C, proxies...)."""
    from fsspec.asyn import sync

    fs = origin.fs
    bucket, key, _ = fs.split_path(path)
    extra: dict[str, Any] = {"VersionId": pin.version_id} if pin.version_id else {}
    if pin.etag and not pin.version_id:
        extra["IfMatch"] = f'"{pin.etag}"'

    async def get() -> tuple[bytes, dict[str, Any]]:
        resp = await fs._call_s3(
            "get_object", Bucket=bucket, Key=key, Range=f"bytes={span[0]}-{span[1] - 1}", **extra
        )
        try:
            return await resp["Body"].read(), resp
        finally:
            resp["Body"].close()

    try:
        body, resp = sync(fs.loop, get, timeout=origin.config.progress_timeout_seconds * 4)
    except Exception as exc:
        if "PreconditionFailed" in str(exc) or "InvalidRange" in str(exc) or "412" in str(exc):
            raise OriginChangedError(f"s3://{path} changed while being read: {exc}") from exc
        raise
    etag = str(resp.get("ETag", "")).strip('"')
    total = str(resp.get("ContentRange", "")).rpartition("/")[2]
    if (pin.etag and etag and etag != pin.etag) or total not in ("", "*", str(pin.size)):
        raise OriginChangedError(f"s3://{path} changed while being read ({pin.etag} -> {etag})")
    if len(body) != len(into):
        raise OSError(f"s3://{path}: {len(body)} bytes for a range of {len(into)}")
    into[:] = body


# -- checksums of concatenated blocks -------------------------------------------------------------
# zlib's crc32_combine (not exposed by Python's zlib): the CRC32 of A+B from crc(A), crc(B)
# and len(B), so a whole object read as blocks is checked against the origin's CRC32
# without hashing it again. Arithmetic on polynomials over GF(2), reflected, as zlib does.
_POLY = 0xEDB88320


def _multmodp(a: int, b: int) -> int:
    """a(x) * b(x) modulo the CRC polynomial."""
    m = 1 << 31
    p = 0
    while True:
        if a & m:
            p ^= b
            if not a & (m - 1):
                break
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return p


def _x2n_table() -> list[int]:
    table, p = [], 1 << 30  # x^1
    for _ in range(32):
        table.append(p)
        p = _multmodp(p, p)
    return table


_X2N = _x2n_table()


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC32 of the concatenation of two byte strings, from their CRC32s."""
    p, k, n = 1 << 31, 3, len2  # x^(8 * len2)
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return _multmodp(p, crc1) ^ crc2


# -- one pool of ranged-read threads per process --------------------------------------------------
_POOL: tuple[int, ThreadPoolExecutor] | None = None
_POOL_LOCK = threading.Lock()


def pool(threads: int) -> ThreadPoolExecutor:
    """This process's threads for block reads (made afresh in a forked child).

    Its size is the per-process window of ranged GETs; queued work starts as soon as any
    running read ends (a sliding window, never batches waiting for their slowest member).
    """
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != os.getpid():
            _POOL = (
                os.getpid(),
                ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tiercache-block"),
            )
        return _POOL[1]


def _reset_in_child() -> None:
    global _POOL_LOCK
    _POOL_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_reset_in_child)
