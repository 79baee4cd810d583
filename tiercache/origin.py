"""The origin: any fsspec filesystem, read with retries, versions and brief listing caches.

The origin is the source of truth. This wrapper is the only place that talks to it, so
retries, time limits, error counting and version extraction are done once, here.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import logging
import os
import posixpath
import random
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from fsspec import AbstractFileSystem

from .bounded import Bounded
from .config import OriginConfig
from .counters import Counters
from .s3direct import DirectGetter, TooLarge, Unsupported

log = logging.getLogger("tiercache.origin")
T = TypeVar("T")

#: Errors that say something about the request, not the weather: never retried.
PERMANENT = (
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    ValueError,
    TypeError,
    NotImplementedError,
)


#: ``call``'s ``what`` -> the ``op`` of the ``origin_<op>_<status>`` request counters.
_REQUEST_OP = {"read": "get", "info": "head", "listing": "list"}


class Fetched(NamedTuple):
    """A whole object as read: its bytes, their version, and their CRC32 where the origin
    vouched for one (then already computed, and checked against it)."""

    data: bytes | bytearray  # a bytearray when read by tiercache.s3direct
    version: str
    crc32: int | None


#: (bytes, the size the origin announced, version, CRC32 if checked): one read's answer.
_Read = tuple[bytes | bytearray, int | None, str, int | None]


class OriginError(OSError):
    """The origin could not be read within the retry budget; names the object."""


class OriginChangedError(OSError):
    """The object changed at the origin while it was being read."""


class ObjectTooLarge(Exception):
    """A whole-object read found the object larger than ``[origin] block_size``: it is read
    as blocks instead (``tiercache.blocks``). Not an error: nothing was fetched."""

    def __init__(self, url: str, size: int = 0) -> None:
        super().__init__(f"{url} is {size} bytes, more than the block size: read it as blocks")
        self.url = url
        self.size = size


class OriginIntegrityError(OSError):
    """A response body does not match the checksum the origin sent with it (retried)."""


def object_version(info: dict[str, Any]) -> str:
    """A string that changes whenever the object's content does (ETag, else size+mtime)."""
    for key in ("ETag", "etag", "md5", "checksum"):
        if info.get(key):
            return f"{info.get('size')}:{str(info[key]).strip(chr(34))}"
    for key in ("mtime", "LastModified", "last_modified", "created", "modified"):
        if info.get(key) is not None:
            return f"{info.get('size')}:{info[key]}"
    return f"{info.get('size')}:"


#: Directories whose listings one process keeps in memory (the rest are listed again).
_LISTINGS = 1024


class Origin:
    """Reads one origin filesystem on behalf of the cache."""

    def __init__(
        self,
        fs: AbstractFileSystem,
        config: OriginConfig,
        counters: Counters,
        listing_ttl: float = 60.0,
        listing_dir: Path | None = None,
    ) -> None:
        self.fs = fs
        self.config = config
        self.counters = counters
        self.listing_ttl = listing_ttl
        #: Where the last listing of each directory is kept, for processes started while
        #: the origin is unreachable (None: in memory only).
        self.listing_dir = listing_dir
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self.protocol = protocol
        #: directory -> (listing time, listing), for the most recently listed directories
        self._listings: Bounded[str, tuple[float, list[dict[str, Any]]]] = Bounded(_LISTINGS)
        #: parent -> (listing time, name -> info), built once per listing
        self._names: Bounded[str, tuple[float, dict[str, dict[str, Any]]]] = Bounded(_LISTINGS)
        self._lock = threading.Lock()
        self._reported: set[str] = set()
        self._deadline = threading.local()  # of the call() running in this thread
        #: Until when the origin counts as unreachable: set when a call gives up, cleared
        #: by any success. Meanwhile validations and listings are not sent (see
        #: :meth:`_skip_while_down`), so cached hits do not each wait out a retry budget.
        self._down_until = 0.0
        #: The filesystem pickled once, for requests to an engine in another process.
        self.pickled: bytes | None = None
        #: The lean GET path for an S3 origin (None: everything through the filesystem).
        self.direct = _direct_getter(fs, config)

    # -- naming ---------------------------------------------------------------------------------
    def strip(self, path: str) -> str:
        return self.fs._strip_protocol(path)

    def key(self, path: str) -> str:
        """The cache key of a (stripped) origin path: the full URL, so origins never collide."""
        return f"{self.protocol}://{path}"

    # -- reads ----------------------------------------------------------------------------------
    def call(self, what: str, path: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` with bounded exponential backoff and jitter; errors name ``path``."""
        deadline = time.monotonic() + self.config.timeout_seconds
        attempt = 0
        op = _REQUEST_OP.get(what, "get")  # bounded metric label: get, head or list
        while True:
            try:
                self._deadline.at = deadline
                result = fn()
            except (ObjectTooLarge, OriginChangedError):
                raise  # an answer, not a failure: retrying would get the same one
            except FileNotFoundError as exc:
                self.counters.add(f"origin_{op}_not_found")
                url = f"{self.protocol}://{self.strip(path)}"
                raise FileNotFoundError(
                    errno.ENOENT, f"no such object at the origin: {url}", url
                ) from exc
            except PERMANENT:
                self.counters.add(f"origin_{op}_error")
                raise
            except Exception as exc:  # network errors come in many library-specific types
                self.counters.add(f"origin_{op}_error")
                self.counters.add("origin_errors")
                attempt += 1
                delay = min(5.0, 0.05 * 2**attempt) * (0.5 + random.random())
                if attempt > self.config.retries or time.monotonic() + delay > deadline:
                    self._report(path, exc)
                    self._down_until = time.monotonic() + self.down_window
                    raise OriginError(
                        f"origin {what} of {self.protocol}://{self.strip(path)} failed after "
                        f"{attempt} attempt(s): {type(exc).__name__}: {exc}"
                    ) from exc
                self.counters.add("origin_retries")
                time.sleep(delay)
            else:
                self.counters.add(f"origin_{op}_ok")
                self._down_until = 0.0
                return result
            finally:
                self._deadline.at = None

    @property
    def down_window(self) -> float:
        """How long after a failed call validations and listings are not retried: the
        validation TTL, within [1 s, 30 s]."""
        return min(max(self.listing_ttl, 1.0), 30.0)

    def _skip_while_down(self, what: str, path: str) -> None:
        """Fail fast, without a request, while the origin is known to be unreachable.

        Only for requests that have a fallback (a cached object served unvalidated, the
        last known listing); a miss still asks the origin, which is how recovery is seen.
        """
        left = self._down_until - time.monotonic()
        if left > 0:
            raise OriginError(
                f"origin {what} of {self.protocol}://{self.strip(path)} not attempted: the "
                f"origin was unreachable moments ago (trying again in {left:.1f} s)"
            )

    def remaining(self) -> float | None:
        """Seconds left of the :meth:`call` running in this thread (None outside one).

        Attempts pass it on as their own time limit: a stalled body or a server that never
        answers must not outlast ``timeout_seconds`` just because the socket stays open.
        """
        at = getattr(self._deadline, "at", None)
        return None if at is None else max(0.001, at - time.monotonic())

    def _run(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``fs.<method>(...)`` within the current call's deadline.

        For async filesystems (s3fs, gcsfs, http) the coroutine is cancelled when the time is
        up; a blocking synchronous filesystem cannot be interrupted from here.
        """
        timeout = self.remaining()
        if timeout is not None and getattr(self.fs, "async_impl", False) and self.fs.loop:
            from fsspec.asyn import sync

            return sync(
                self.fs.loop, getattr(self.fs, f"_{method}"), *args, timeout=timeout, **kwargs
            )
        return getattr(self.fs, method)(*args, **kwargs)

    def _report(self, path: str, exc: Exception) -> None:
        if path not in self._reported:  # one log line per object, not one per retry
            self._reported.add(path)
            log.warning("origin read of %s failed: %s: %s", path, type(exc).__name__, exc)

    def info(self, path: str, *, refresh: bool = False) -> dict[str, Any]:
        path = self.strip(path)
        if refresh:
            self._skip_while_down("info", path)
            self.fs.invalidate_cache(path)
        self.counters.add("origin_heads")
        return self.call("info", path, lambda: self._run("info", path))

    def fetch(self, path: str) -> Fetched:
        """The whole object and its version; the length must match what the origin said."""
        path = self.strip(path)
        for _ in range(3):
            started = time.perf_counter()
            data, size, version, crc32 = self.call("read", path, lambda: self._read_versioned(path))
            self.counters.observe_origin_seconds(time.perf_counter() - started)
            self.counters.add("origin_reads")
            self.counters.add("origin_bytes", len(data))
            if size is None or len(data) == size:
                return Fetched(data, version, crc32)
            # Truncated body, or the object changed between HEAD and GET: never admit it.
            self.counters.add("origin_errors")
            log.warning("%s: got %d bytes, origin said %s; re-reading", path, len(data), size)
        raise OriginChangedError(f"{self.protocol}://{path}: size kept changing while reading")

    def _read_versioned(self, path: str) -> _Read:
        """(bytes, the size the origin announced, version, their CRC32 if checked) in as few
        requests as possible."""
        if _is_s3(self.fs):
            direct = self.direct
            limit = self.config.block_size
            if direct is not None:
                try:
                    return _direct_get(direct, path, self.remaining(), limit)
                except TooLarge as large:
                    raise ObjectTooLarge(self.key(path), large.size) from None
                except Unsupported as why:
                    result = _s3_get(self.fs, path, self.remaining(), limit)
                    # s3fs read what the direct path could not: stop trying it here.
                    log.warning("direct GETs off for this origin (%s: %s)", path, why)
                    self.direct = None
                    return result
            return _s3_get(self.fs, path, self.remaining(), limit)
        self.fs.invalidate_cache(path)
        self.counters.add("origin_heads")
        info = self._run("info", path)
        if info.get("type") == "directory":
            raise IsADirectoryError(f"{self.protocol}://{path} is a directory")
        size = info.get("size")
        if isinstance(size, int) and size > self.config.block_size:
            raise ObjectTooLarge(self.key(path), size)
        return self._run("cat_file", path), size, object_version(info), None

    def fetch_range(self, path: str, start: int, end: int) -> bytes:
        path = self.strip(path)
        data = self.call("read", path, lambda: self._run("cat_file", path, start=start, end=end))
        self.counters.add("origin_reads")
        self.counters.add("origin_bytes", len(data))
        return data

    # -- listings -------------------------------------------------------------------------------
    def ls(self, path: str, *, max_age: float | None = None) -> list[dict[str, Any]]:
        """A directory listing, at most ``max_age`` (default: the listing TTL) seconds old.

        The last listing is kept after it expires: when the origin cannot be reached it is
        what offline mode serves.
        """
        path = self.strip(path).rstrip("/")
        max_age = self.listing_ttl if max_age is None else max_age
        now = time.monotonic()
        cached = self._listings.get(path)
        if cached is None and self.config.offline:
            cached = self._load_listing(path)
        if cached and (now - cached[0] <= max_age or self.config.offline):
            return cached[1]
        try:
            self._skip_while_down("listing", path)
            self.fs.invalidate_cache(path)
            self.counters.add("origin_lists")
            listing = self.call("listing", path, lambda: self._run("ls", path, detail=True))
        except OriginError:
            cached = cached or self._load_listing(path)
            if not cached:
                raise
            # The last known state beats an error. It stands for another TTL, so that hits
            # validating against it do not each wait out the retry budget again.
            with self._lock:
                self._listings[path] = (time.monotonic(), cached[1])
            return cached[1]
        with self._lock:
            self._listings[path] = (now, listing)
        self._save_listing(path, listing)
        return listing

    def _listing_file(self, path: str) -> Path | None:
        if self.listing_dir is None:
            return None
        name = hashlib.sha256(f"{self.protocol}://{path}".encode()).hexdigest()[:32]
        return self.listing_dir / f"{name}.json"

    def _save_listing(self, path: str, listing: list[dict[str, Any]]) -> None:
        """Keep the listing on disk (atomically replaced) as this directory's last known
        state; failing to is only a lost fallback, never a failed read."""
        target = self._listing_file(path)
        if target is None:
            return
        from .security import ensure_private_dir

        tmp = target.with_name(f".tmp-{target.name}-{os.getpid()}-{threading.get_ident()}")
        try:
            ensure_private_dir(target.parent)
            text = json.dumps({"path": path, "listing": listing}, default=str)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, target)
        except (OSError, TypeError, ValueError) as exc:
            log.debug("could not keep the listing of %s: %s", path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _load_listing(self, path: str) -> tuple[float, list[dict[str, Any]]] | None:
        """The last listing of ``path`` any process saw, as (time 0: expired, listing)."""
        source = self._listing_file(path)
        if source is None:
            return None
        try:
            saved = json.loads(source.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(saved, dict) or saved.get("path") != path:
            return None
        log.info("origin unreachable or offline: listing %s from its last known state", path)
        with self._lock:
            if path not in self._listings:
                self._listings[path] = (0.0, saved["listing"])
            return self._listings[path]

    def listed_at(self, path: str) -> float:
        """When (``time.monotonic``) this process last listed directory ``path`` (0: never)."""
        cached = self._listings.get(self.strip(path).rstrip("/"))
        return cached[0] if cached else 0.0

    def listed(self, path: str, max_age: float | None = None) -> dict[str, Any] | None:
        """The info of ``path`` from its parent's listing (None: not there).

        Looked up in a name table built once per listing, not by scanning the listing:
        a FUSE ``getattr`` or a validation per object would otherwise cost O(n) each.
        """
        path = self.strip(path).rstrip("/")
        parent = posixpath.dirname(path)
        listing = self.ls(parent, max_age=max_age)
        when = self._listings[parent.rstrip("/")][0] if parent.rstrip("/") in self._listings else 0
        names = self._names.get(parent)
        if names is None or names[0] != when:
            table = {self.strip(i["name"]).rstrip("/"): i for i in listing}
            names = self._names[parent] = (when, table)
        return names[1].get(path)

    def listed_size(self, path: str) -> int | None:
        """The object's size from a listing this process already holds, however old; None
        when it holds none. Never sends a request: a guess, for budgeting prefetches."""
        parent = posixpath.dirname(self.strip(path).rstrip("/"))
        cached = self._listings.get(parent)
        if cached is None:
            return None
        info = self.listed(path, max_age=float("inf"))
        size = None if info is None else info.get("size")
        return size if isinstance(size, int) else None

    def still_at(self, path: str, version: str) -> bool:
        """Whether the object is still ``version`` at the origin (one HEAD). An origin that
        cannot be reached says yes: what is cached stays in use while it is down."""
        try:
            return object_version(self.info(path, refresh=True)) == version
        except OriginError:
            return True
        except FileNotFoundError:
            return False

    def version_in_hand(self, path: str, max_age: float) -> str | None:
        """The object's version from a listing this process already holds, at most
        ``max_age`` seconds old; None without one. Never sends a request (a peer's answer is
        checked against it: cheap when known, skipped when not)."""
        parent = posixpath.dirname(self.strip(path).rstrip("/"))
        cached = self._listings.get(parent)
        if cached is None or time.monotonic() - cached[0] > max_age:
            return None
        info = self.listed(path, max_age=float("inf"))
        if info is None or info.get("type") == "directory":
            return None
        return object_version(info)

    def forget_listings(self) -> None:
        with self._lock:
            self._listings.clear()
            self._names.clear()


def _is_s3(fs: AbstractFileSystem) -> bool:
    return type(fs).__module__.startswith("s3fs")


def _direct_getter(fs: AbstractFileSystem, config: OriginConfig) -> DirectGetter | None:
    """:mod:`tiercache.s3direct` for an S3 origin, unless it does not apply or
    ``[origin] direct_get`` is off."""
    if not config.direct_get or not _is_s3(fs):
        return None
    try:
        return DirectGetter(fs)
    except Unsupported as why:
        log.info("reading through s3fs only: %s", why)
        return None


def _s3_get(fs: Any, path: str, timeout: float | None = None, limit: int | None = None) -> _Read:
    """One GET whose response carries the ETag and length of exactly the bytes it returns.

    s3fs's ``cat_file`` would HEAD first and cannot tell us which version it read; the
    response headers of the GET itself are the only atomic answer. The body is checked
    against its CRC32 or MD5 (see :func:`_check_body`), so bytes damaged on the way are
    retried, never cached. ``timeout`` bounds the whole request.
    """
    from fsspec.asyn import sync

    bucket, key, version_id = fs.split_path(path)
    if not key:
        raise IsADirectoryError(f"s3://{path} is a bucket, not an object")

    async def get() -> tuple[bytes, dict[str, Any]]:
        extra = {"VersionId": version_id} if version_id else {}
        # ChecksumMode: S3 sends the object's stored checksum only when asked.
        resp = await fs._call_s3(
            "get_object", Bucket=bucket, Key=key, ChecksumMode="ENABLED", **extra
        )
        try:
            size = resp.get("ContentLength")
            if limit is not None and isinstance(size, int) and size > limit:
                raise ObjectTooLarge(f"s3://{path}", size)  # closing the body aborts it
            body = await resp["Body"].read()
        finally:
            resp["Body"].close()
        return body, resp

    # Hash here, not in the coroutine: the event loop serves every other fetch meanwhile.
    body, resp = sync(fs.loop, get, timeout=timeout)
    return _checked(path, body, resp)


def _direct_get(
    direct: DirectGetter, path: str, timeout: float | None, limit: int | None = None
) -> _Read:
    """:func:`_s3_get` through :mod:`tiercache.s3direct`; the same checks, the same answer."""
    bucket, key, version_id = direct.fs.split_path(path)
    if not key:
        raise IsADirectoryError(f"s3://{path} is a bucket, not an object")
    resp = direct.get(bucket, key, version_id, timeout, limit)
    return _checked(path, resp.body, resp.headers)


def _checked(path: str, body: bytes | bytearray, resp: dict[str, Any]) -> _Read:
    """One GET's answer (``resp``: its headers as botocore names them), its body checked."""
    size = resp.get("ContentLength")
    etag = str(resp.get("ETag", "")).strip(chr(34))
    crc32 = _check_body(f"s3://{path}", body, etag, resp)
    return body, size, f"{size}:{etag}", crc32


def _check_body(url: str, body: bytes | bytearray, etag: str, resp: dict[str, Any]) -> int | None:
    """Raise if ``body`` is not the object the response describes; its CRC32 if checked.

    Where S3 keeps a whole-object CRC32 (``x-amz-checksum-crc32``: objects uploaded with one,
    which current SDKs send by default), that is checked: crc32 runs at about 6 GB/s, MD5 at
    under 1 GB/s, and on a busy node the difference is CPU the readers need. Otherwise the
    ETag is checked where it is the body's MD5: exactly 32 hex digits, which multipart ETags
    (a ``-<parts>`` suffix) and SSE-KMS or SSE-C objects are not; those are left to
    botocore's own ``x-amz-checksum-*`` validation and the length check.

    The CRC32 returned is zlib's, the checksum tiers keep: the engine stores the body with
    it rather than hashing the same bytes a second time.
    """
    crc = str(resp.get("ChecksumCRC32") or "")
    if crc and "-" not in crc and resp.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT":
        expected = int.from_bytes(base64.b64decode(crc), "big")
        actual = zlib.crc32(body)
        if actual != expected:
            raise OriginIntegrityError(
                f"{url}: body of {len(body)} bytes has CRC32 {actual:08x}, the origin's "
                f"x-amz-checksum-crc32 says {expected:08x}"
            )
        return actual
    if len(etag) != 32 or any(c not in "0123456789abcdef" for c in etag.lower()):
        return None
    if str(resp.get("ServerSideEncryption", "")).startswith("aws:kms"):
        return None
    if resp.get("SSECustomerAlgorithm"):
        return None
    digest = hashlib.md5(body, usedforsecurity=False).hexdigest()
    if digest != etag.lower():
        raise OriginIntegrityError(
            f"{url}: body of {len(body)} bytes has MD5 {digest}, the origin's ETag says {etag}"
        )
    return None
