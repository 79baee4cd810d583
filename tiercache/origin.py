"""The origin: any fsspec filesystem, read with retries, versions and brief listing caches.

The origin is the source of truth. This wrapper is the only place that talks to it, so
retries, time limits, error counting and version extraction are done once, here.
"""

from __future__ import annotations

import errno
import logging
import posixpath
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from fsspec import AbstractFileSystem

from .config import OriginConfig
from .counters import Counters

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


class OriginError(OSError):
    """The origin could not be read within the retry budget; names the object."""


class OriginChangedError(OSError):
    """The object changed at the origin while it was being read."""


def object_version(info: dict[str, Any]) -> str:
    """A string that changes whenever the object's content does (ETag, else size+mtime)."""
    for key in ("ETag", "etag", "md5", "checksum"):
        if info.get(key):
            return f"{info.get('size')}:{str(info[key]).strip(chr(34))}"
    for key in ("mtime", "LastModified", "last_modified", "created", "modified"):
        if info.get(key) is not None:
            return f"{info.get('size')}:{info[key]}"
    return f"{info.get('size')}:"


class Origin:
    """Reads one origin filesystem on behalf of the cache."""

    def __init__(
        self,
        fs: AbstractFileSystem,
        config: OriginConfig,
        counters: Counters,
        listing_ttl: float = 60.0,
    ) -> None:
        self.fs = fs
        self.config = config
        self.counters = counters
        self.listing_ttl = listing_ttl
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self.protocol = protocol
        self._listings: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._versions: dict[str, tuple[float, dict[str, str]]] = {}  # parent -> name -> version
        self._lock = threading.Lock()
        self._reported: set[str] = set()
        #: The filesystem pickled once, for requests to an engine in another process.
        self.pickled: bytes | None = None

    # -- naming ---------------------------------------------------------------------------------
    def strip(self, path: str) -> str:
        return self.fs._strip_protocol(path)

    def key(self, path: str) -> str:
        """The cache key of an origin path: the full URL, so two origins never collide."""
        return f"{self.protocol}://{self.strip(path)}"

    # -- reads ----------------------------------------------------------------------------------
    def call(self, what: str, path: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` with bounded exponential backoff and jitter; errors name ``path``."""
        deadline = time.monotonic() + self.config.timeout_seconds
        attempt = 0
        op = _REQUEST_OP.get(what, "get")  # bounded metric label: get, head or list
        while True:
            try:
                result = fn()
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
                    raise OriginError(
                        f"origin {what} of {self.protocol}://{self.strip(path)} failed after "
                        f"{attempt} attempt(s): {type(exc).__name__}: {exc}"
                    ) from exc
                self.counters.add("origin_retries")
                time.sleep(delay)
            else:
                self.counters.add(f"origin_{op}_ok")
                return result

    def _report(self, path: str, exc: Exception) -> None:
        if path not in self._reported:  # one log line per object, not one per retry
            self._reported.add(path)
            log.warning("origin read of %s failed: %s: %s", path, type(exc).__name__, exc)

    def info(self, path: str, *, refresh: bool = False) -> dict[str, Any]:
        path = self.strip(path)
        if refresh:
            self.fs.invalidate_cache(path)
        self.counters.add("origin_heads")
        return self.call("info", path, lambda: self.fs.info(path))

    def fetch(self, path: str) -> tuple[bytes, str]:
        """The whole object and its version; the length must match what the origin said."""
        path = self.strip(path)
        for _ in range(3):
            started = time.perf_counter()
            data, size, version = self.call("read", path, lambda: self._read_versioned(path))
            self.counters.observe_origin_seconds(time.perf_counter() - started)
            self.counters.add("origin_reads")
            self.counters.add("origin_bytes", len(data))
            if size is None or len(data) == size:
                return data, version
            # Truncated body, or the object changed between HEAD and GET: never admit it.
            self.counters.add("origin_errors")
            log.warning("%s: got %d bytes, origin said %s; re-reading", path, len(data), size)
        raise OriginChangedError(f"{self.protocol}://{path}: size kept changing while reading")

    def _read_versioned(self, path: str) -> tuple[bytes, int | None, str]:
        """(bytes, the size the origin announced, version) in as few requests as possible."""
        if _is_s3(self.fs):
            return _s3_get(self.fs, path)
        self.fs.invalidate_cache(path)
        self.counters.add("origin_heads")
        info = self.fs.info(path)
        if info.get("type") == "directory":
            raise IsADirectoryError(f"{self.protocol}://{path} is a directory")
        return self.fs.cat_file(path), info.get("size"), object_version(info)

    def fetch_range(self, path: str, start: int, end: int) -> bytes:
        path = self.strip(path)
        data = self.call("read", path, lambda: self.fs.cat_file(path, start=start, end=end))
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
        if cached and (now - cached[0] <= max_age or self.config.offline):
            return cached[1]
        try:
            self.fs.invalidate_cache(path)
            self.counters.add("origin_lists")
            listing = self.call("listing", path, lambda: self.fs.ls(path, detail=True))
        except OriginError:
            if cached:  # offline: the last known state beats an error
                return cached[1]
            raise
        with self._lock:
            self._listings[path] = (now, listing)
        return listing

    def version_from_listing(self, path: str, max_age: float) -> str | None:
        """The object's current version from its parent's listing; None if it is gone."""
        path = self.strip(path)
        parent = posixpath.dirname(path)
        listing = self.ls(parent, max_age=max_age)
        when = self._listings[parent.rstrip("/")][0] if parent.rstrip("/") in self._listings else 0
        versions = self._versions.get(parent)
        if versions is None or versions[0] != when:
            table = {
                self.strip(i["name"]).rstrip("/"): object_version(i)
                for i in listing
                if i.get("type") != "directory"
            }
            versions = self._versions[parent] = (when, table)
        return versions[1].get(path)

    def forget_listings(self) -> None:
        with self._lock:
            self._listings.clear()
            self._versions.clear()


def _is_s3(fs: AbstractFileSystem) -> bool:
    return type(fs).__module__.startswith("s3fs")


def _s3_get(fs: Any, path: str) -> tuple[bytes, int | None, str]:
    """One GET whose response carries the ETag and length of exactly the bytes it returns.

    s3fs's ``cat_file`` would HEAD first and cannot tell us which version it read; the
    response headers of the GET itself are the only atomic answer.
    """
    from fsspec.asyn import sync

    bucket, key, version_id = fs.split_path(path)
    if not key:
        raise IsADirectoryError(f"s3://{path} is a bucket, not an object")

    async def get() -> tuple[bytes, int | None, str]:
        extra = {"VersionId": version_id} if version_id else {}
        resp = await fs._call_s3("get_object", Bucket=bucket, Key=key, **extra)
        try:
            body = await resp["Body"].read()
        finally:
            resp["Body"].close()
        size = resp.get("ContentLength")
        etag = str(resp.get("ETag", "")).strip(chr(34))
        return body, size, f"{size}:{etag}"

    return sync(fs.loop, get)
