"""A read-only POSIX view of an origin prefix, served through the tiers by a FUSE mount.

Programs that read plain paths (``tar``, ``sha256sum``, WebDataset, ``numpy.memmap``) get the
cache without knowing about fsspec. The kernel asks; :class:`TierCacheOperations` answers
from a :class:`~tiercache.fs.TierCacheFileSystem`:

- metadata comes from the origin's listings (sizes, mtimes), cached as long as the config's
  ``[validation]`` allows, so ``ls -lR`` costs one origin listing per directory;
- ``read`` copies the asked range from a tier (fetching the object on a miss) straight into
  the kernel's buffer, so a range never loads the whole object;
- with the kernel's page cache kept (the default), ``open`` never reaches this process: the
  first one answers ``ENOSYS`` and the kernel stops asking (a "zero-message open"), so
  re-reading a cached file costs no trip through FUSE at all. Reads then arrive by path and
  are served from a few files kept open per path; the kernel drops a file's page cache when
  the size or mtime it is given for it changes. With ``--no-kernel-cache`` each ``open``
  locates the object and keeps a :class:`~tiercache.fs.TierCacheFile` per handle;
- everything that would change the tree fails with ``EROFS``; a missing path is ``ENOENT``;
  an origin that cannot be reached, with nothing cached, is ``EIO``; each distinct failure is
  logged once, with the path.

libfuse (via ``mfusepy``) runs the loop on several threads; the tier reads release the GIL,
so reads of different files proceed in parallel.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import logging
import os
import posixpath
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .bounded import Bounded
from .origin import OriginError

if TYPE_CHECKING:
    from .fs import TierCacheFile, TierCacheFileSystem

log = logging.getLogger("tiercache.mount")

#: Block size reported to ``stat``. ``cat``/``cp`` size their buffers from it and allocate a
#: fresh buffer per file: at 1 MiB that is 256 page faults and 1 MiB zeroed per file, which
#: cost ``cat`` a third of its speed on page-cache hits. The daemon's request size does not
#: follow it (buffered reads arrive as readahead: ``MAX_READ`` pieces), so the smallest
#: buffer ``cat`` uses anyway (128 KiB) is the best answer.
BLOCK_SIZE = 128 * 1024
#: libfuse3's ceiling for one request (256 pages); the kernel splits larger reads.
MAX_READ = 1024 * 1024
#: Kernel readahead for the mount: the kernel default (128 KiB) makes every sequential read a
#: stream of small requests, each a trip through Python.
DEFAULT_READAHEAD = 4 * 1024 * 1024

#: Files kept open for reads that arrive by path (zero-message open): enough for every
#: libfuse thread to be reading a different file, and a bound on the blobs held open.
PATH_HANDLES = 64

#: libfuse3's capability bits (fuse_common.h): the kernel drops a file's page cache when a
#: lookup or getattr reports a new size or mtime, unless the filesystem asked to do that
#: explicitly itself.
FUSE_CAP_AUTO_INVAL_DATA = 1 << 12
FUSE_CAP_EXPLICIT_INVAL_DATA = 1 << 25

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def fuse_errno(exc: BaseException) -> int:
    """The errno the kernel should see for ``exc``.

    Origin trouble (retries exhausted, object changing under the read, library errors)
    is ``EIO``: the caller can retry, and nothing else describes it honestly.
    """
    if isinstance(exc, FileNotFoundError):
        return errno.ENOENT
    if isinstance(exc, IsADirectoryError):
        return errno.EISDIR
    if isinstance(exc, NotADirectoryError):
        return errno.ENOTDIR
    if isinstance(exc, PermissionError):
        return errno.EACCES
    if isinstance(exc, OriginError):
        return errno.EIO
    if isinstance(exc, OSError) and exc.errno in (
        errno.EROFS,
        errno.ENOENT,
        errno.EACCES,
        errno.ENOTDIR,
        errno.EISDIR,
    ):
        return exc.errno
    return errno.EIO


def fuse_error(code: int) -> OSError:
    """An OSError that mfusepy turns into ``-code`` for the kernel."""
    return OSError(code, os.strerror(code))


def listing_ttl(mode: str, ttl_seconds: float) -> float:
    """How long a directory listing may be served: ``[validation]`` decides, as for data."""
    if mode == "always":
        return 0.0
    if mode == "never":
        return float("inf")
    return ttl_seconds


def _mtime(info: dict[str, Any], default: float) -> float:
    """Seconds since the epoch from whatever the origin filesystem calls it."""
    for key in ("mtime", "LastModified", "last_modified", "modified", "updated", "created"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return default


@dataclass
class _Listing:
    """One directory as the origin listed it: child name -> stat attributes."""

    when: float
    children: dict[str, dict[str, Any]]


class _Handle:
    """One open file: its TierCacheFile and a lock, as the file's position is shared state.

    A handle opened for reads by path also remembers when, and the size and mtime the
    listing gave for the path then (``stamp``), so it is reused only while both hold.
    """

    __slots__ = ("closed", "file", "lock", "opened", "path", "stamp")

    def __init__(
        self, path: str, file: TierCacheFile, stamp: tuple[int, int] = (0, 0), opened: float = 0.0
    ) -> None:
        self.path = path
        self.file = file
        self.lock = threading.Lock()
        self.stamp = stamp
        self.opened = opened
        self.closed = False

    def read_into(self, view: memoryview, offset: int) -> int | None:
        """Bytes copied; ``None`` if another thread closed the handle first."""
        with self.lock:
            if self.closed:
                return None
            self.file.seek(offset)
            return self.file.readinto(view)

    def close(self) -> None:
        with self.lock:
            if not self.closed:
                self.closed = True
                self.file.close()


class TierCacheOperations:
    """The FUSE callbacks (mfusepy's ``Operations`` protocol) over a TierCacheFileSystem.

    Paths the kernel gives ("/a/b") are joined to ``root`` (the origin prefix, without the
    protocol). Nothing here keeps data: the tiers do; this class keeps open handles and
    brief listing caches only.
    """

    use_ns = True  # mfusepy: times in nanoseconds where it passes them to us

    def __init__(
        self,
        fs: TierCacheFileSystem,
        root: str,
        *,
        readahead: int = DEFAULT_READAHEAD,
        mountpoint: str | None = None,
        zero_message_open: bool = False,
    ) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.readahead = readahead
        self.mountpoint = mountpoint
        validation = fs.config.validation
        self.ttl = listing_ttl(validation.mode, validation.ttl_seconds)
        # Without an open per file, reads by path reuse a file opened up to ttl ago; with
        # ttl 0 every open must reach fs.open (and its validation), so opens stay.
        self.zero_message_open = zero_message_open and self.ttl > 0
        self.mounted_at = time.time()
        self.initialized = False  # set when the kernel has accepted the mount
        self.uid, self.gid = os.getuid(), os.getgid()
        #: The most recently listed directories (a mount of a deep tree lists thousands).
        self._listings: Bounded[str, _Listing] = Bounded(4096)
        self._listing_lock = threading.Lock()
        self._handles: dict[int, _Handle] = {}
        self._next_fh = itertools.count(1)
        self._by_path: OrderedDict[str, _Handle] = OrderedDict()
        self._by_path_lock = threading.Lock()
        self._reported: set[tuple[str, str, int]] = set()
        self._report_lock = threading.Lock()

    # -- paths, attributes, errors ----------------------------------------------------------------
    def origin_path(self, path: str) -> str:
        """The origin path for a mount path; ``..`` cannot climb above the root."""
        rel = posixpath.normpath("/" + path).lstrip("/")
        return f"{self.root}/{rel}" if rel else self.root

    def _dir_attrs(self, mtime: float | None = None) -> dict[str, Any]:
        t = int((mtime if mtime is not None else self.mounted_at) * 1e9)
        return {
            "st_mode": stat.S_IFDIR | 0o555,
            "st_nlink": 2,
            "st_size": 0,
            "st_uid": self.uid,
            "st_gid": self.gid,
            "st_blksize": BLOCK_SIZE,
            "st_mtime": t,
            "st_ctime": t,
            "st_atime": t,
        }

    def _attrs(self, info: dict[str, Any]) -> dict[str, Any]:
        if info.get("type") == "directory":
            return self._dir_attrs(_mtime(info, self.mounted_at))
        size = int(info.get("size") or 0)
        t = int(_mtime(info, self.mounted_at) * 1e9)
        return {
            "st_mode": stat.S_IFREG | 0o444,
            "st_nlink": 1,
            "st_size": size,
            "st_blocks": (size + 511) // 512,
            "st_blksize": BLOCK_SIZE,
            "st_uid": self.uid,
            "st_gid": self.gid,
            "st_mtime": t,
            "st_ctime": t,
            "st_atime": t,
        }

    def _fail(self, op: str, path: str, exc: BaseException) -> OSError:
        """Map ``exc`` to an errno, logging each (operation, path, errno) once."""
        code = fuse_errno(exc)
        key = (op, path, code)
        with self._report_lock:
            first = key not in self._reported
            self._reported.add(key)
        if first and code != errno.ENOENT:
            log.warning(
                "%s %s: %s (%s: %s)",
                op,
                path,
                errno.errorcode.get(code, code),
                type(exc).__name__,
                exc,
            )
        elif first:
            log.debug("%s %s: ENOENT (%s)", op, path, exc)
        return fuse_error(code)

    # -- listings ---------------------------------------------------------------------------------
    def _children(self, path: str) -> dict[str, dict[str, Any]]:
        """The directory's children (name -> attrs), from the origin at most ``ttl`` old."""
        now = time.monotonic()
        cached = self._listings.get(path)
        if cached is not None and now - cached.when <= self.ttl:
            return cached.children
        origin_dir = self.origin_path(path)
        try:
            entries = self.fs.ls(origin_dir, detail=True, refresh=self.ttl == 0)
        except OriginError:
            if cached is not None:  # unreachable origin: the last listing beats an error
                return cached.children
            raise
        children: dict[str, dict[str, Any]] = {}
        for info in entries:
            name = posixpath.basename(str(info["name"]).rstrip("/"))
            full = self.fs._strip_protocol(str(info["name"])).rstrip("/")
            if not name or full == origin_dir:
                continue  # some stores list a directory (or a file) as its own child
            children[name] = self._attrs(info)
        with self._listing_lock:
            self._listings[path] = _Listing(now, children)
        return children

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        if path == "/":
            return self._dir_attrs()
        parent, name = posixpath.split(path.rstrip("/"))
        try:
            children = self._children(parent)
        except FileNotFoundError as exc:
            raise self._fail("getattr", path, exc) from None
        except Exception as exc:
            # The parent cannot be listed: what the cache index knows is still served.
            try:
                return self._attrs(self.fs.info(self.origin_path(path)))
            except Exception:
                raise self._fail("getattr", path, exc) from None
        attrs = children.get(name)
        if attrs is None:
            raise self._fail("getattr", path, FileNotFoundError(path))
        return attrs

    def readdir(self, path: str, fh: int) -> list[str]:
        try:
            children = self._children(path)
        except Exception as exc:
            raise self._fail("readdir", path, exc) from None
        return [".", "..", *children]

    # -- data -------------------------------------------------------------------------------------
    def open(self, path: str, flags: int) -> int:
        if flags & _WRITE_FLAGS:
            raise self._fail("open", path, OSError(errno.EROFS, "read-only mount"))
        if self.zero_message_open:
            # The kernel takes ENOSYS from open as "opens need no daemon" and from then on
            # neither sends open nor release, and keeps each file's page cache until the
            # attributes we report for it change. The file was found by lookup already.
            log.debug("open %s: ENOSYS, the kernel opens files without asking from now on", path)
            raise fuse_error(errno.ENOSYS)
        try:
            file = self.fs.open(self.origin_path(path), "rb")
        except Exception as exc:
            raise self._fail("open", path, exc) from None
        fh = next(self._next_fh)
        self._handles[fh] = _Handle(path, file)
        return fh

    def read_into(self, path: str | None, fh: int, view: memoryview, offset: int) -> int:
        """Fill ``view`` (the kernel's reply buffer) from ``offset``; bytes copied."""
        if not fh and path is not None and self.zero_message_open:
            return self._read_by_path(path, view, offset)
        handle = self._handles.get(fh)
        if handle is None:
            raise fuse_error(errno.EBADF)
        try:
            n = handle.read_into(view, offset)
        except Exception as exc:
            raise self._fail("read", handle.path, exc) from None
        if n is None:
            raise fuse_error(errno.EBADF)
        return n

    def _read_by_path(self, path: str, view: memoryview, offset: int) -> int:
        """A read without a handle: from the file opened for ``path`` while it is still valid."""
        for _ in range(3):  # a handle another thread closed under us: take a fresh one
            handle = self._path_handle(path)
            try:
                n = handle.read_into(view, offset)
            except Exception as exc:
                raise self._fail("read", path, exc) from None
            if n is not None:
                return n
        raise self._fail("read", path, OSError(errno.EIO, "file kept closing under the read"))

    def _path_handle(self, path: str) -> _Handle:
        """The file open for ``path``: reused while opened within the validation TTL and the
        listing still gives the size and mtime it had then, opened (and located) otherwise.

        One open per file and TTL, as an ``open`` per file would do: each open counts as an
        access for eviction and promotion, so opening per request would overcount.
        """
        attrs = self.getattr(path)  # the cached listing; raises ENOENT/EIO as lookup does
        stamp = (int(attrs.get("st_size", 0)), int(attrs.get("st_mtime", 0)))
        now = time.monotonic()
        with self._by_path_lock:
            handle = self._by_path.get(path)
            if (
                handle is not None
                and not handle.closed
                and handle.stamp == stamp
                and now - handle.opened <= self.ttl
            ):
                self._by_path.move_to_end(path)
                return handle
        try:
            file = self.fs.open(self.origin_path(path), "rb")
        except Exception as exc:
            raise self._fail("read", path, exc) from None
        fresh = _Handle(path, file, stamp, now)
        with self._by_path_lock:
            stale = [self._by_path.pop(path)] if path in self._by_path else []
            self._by_path[path] = fresh
            while len(self._by_path) > PATH_HANDLES:
                stale.append(self._by_path.popitem(last=False)[1])
        for old in stale:
            old.close()
        return fresh

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        """The plain-bytes form; :class:`_FUSE` calls :meth:`read_into` instead."""
        buf = bytearray(size)
        n = self.read_into(path, fh, memoryview(buf), offset)
        return bytes(buf[:n])

    def release(self, path: str | None, fh: int) -> int:
        handle = self._handles.pop(fh, None)
        if handle is not None:
            handle.close()
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        capacity = sum(t.capacity for t in self.fs.config.tiers)
        return {
            "f_bsize": BLOCK_SIZE,
            "f_frsize": BLOCK_SIZE,
            "f_blocks": capacity // BLOCK_SIZE,
            "f_bfree": 0,
            "f_bavail": 0,
            "f_files": 0,
            "f_ffree": 0,
            "f_namemax": 1024,
        }

    # -- lifecycle --------------------------------------------------------------------------------
    def init_with_config(self, conn: Any, config: Any) -> None:
        self.initialized = True
        if conn is not None:
            # libfuse3 refuses to start unless init asks for the max_read the mount option did.
            conn.max_read = MAX_READ
            conn.max_readahead = max(self.readahead, 128 * 1024)
            if self.zero_message_open:
                # Without opens, the kernel's own check of size and mtime is what drops a
                # changed file's page cache; without it, keep opens (and libfuse's check).
                if conn.capable & FUSE_CAP_AUTO_INVAL_DATA:
                    conn.want = (conn.want | FUSE_CAP_AUTO_INVAL_DATA) & ~(
                        FUSE_CAP_EXPLICIT_INVAL_DATA
                    )
                else:
                    self.zero_message_open = False
                    log.info("the kernel cannot check cached pages itself; every open is served")
        if self.readahead and self.mountpoint:
            threading.Thread(
                target=self._tune_readahead, name="tiercache-mount-readahead", daemon=True
            ).start()

    def _tune_readahead(self) -> None:
        """Raise the mount's readahead window through sysfs (needs root; optional).

        Only the kernel's per-device setting makes sequential reads arrive as 1 MiB
        requests. ``stat`` waits until the kernel has processed our init reply, which
        would otherwise reset the window.
        """
        assert self.mountpoint is not None
        try:
            dev = os.stat(self.mountpoint).st_dev
            knob = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
            with open(knob, "w") as f:
                f.write(str(self.readahead // 1024))
            log.debug("readahead %d KiB via %s", self.readahead // 1024, knob)
        except OSError as exc:
            log.info(
                "kept the kernel's default readahead (%s); sequential reads arrive in "
                "smaller pieces",
                exc,
            )

    def destroy(self, path: str) -> None:
        for fh in list(self._handles):
            self.release(None, fh)
        with self._by_path_lock:
            by_path, self._by_path = list(self._by_path.values()), OrderedDict()
        for handle in by_path:
            handle.close()

    # -- everything that writes: a read-only mount ----------------------------------------------
    # The mount is also made with ``ro``, so the kernel refuses most of these itself; the
    # handlers make the answer EROFS whichever way a request arrives.
    def _read_only(self, *args: Any, **kwargs: Any) -> int:
        raise fuse_error(errno.EROFS)

    create = write = truncate = unlink = rmdir = mkdir = rename = _read_only
    symlink = link = mknod = chmod = chown = utimens = _read_only
    setxattr = removexattr = fallocate = _read_only

    def handles(self) -> Iterator[_Handle]:
        """Open handles, per open and per path (for tests and diagnostics)."""
        with self._by_path_lock:
            by_path = list(self._by_path.values())
        return iter(list(self._handles.values()) + by_path)


def _fuse_class() -> type:
    """mfusepy's FUSE with ``read`` writing into the kernel's buffer in place.

    mfusepy's own ``read`` takes the bytes an operation returns and copies them again; on
    1 MiB requests that is a fresh allocation plus a copy per call. Imported lazily:
    mfusepy loads libfuse when imported and fails where libfuse is not installed.
    """
    from .dependencies import require

    require("fuse")
    import mfusepy

    class _FUSE(mfusepy.FUSE):
        def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
            view = (ctypes.c_char * size).from_address(ctypes.addressof(buf.contents))
            decoded = None if path is None else path.decode(self.encoding, self.errors)
            return int(
                self.operations.read_into(
                    decoded, fip.contents.fh, memoryview(view).cast("B"), offset
                )
            )

    return _FUSE


def run_mount(
    fs: TierCacheFileSystem,
    root: str,
    mountpoint: str,
    *,
    allow_other: bool = False,
    kernel_cache: bool = True,
    readahead: int = DEFAULT_READAHEAD,
    threads: int = 16,
    debug: bool = False,
) -> None:
    """Mount ``root`` of ``fs`` at ``mountpoint`` and serve until unmounted or signalled.

    ``kernel_cache`` lets the page cache keep unchanged files between opens (fast epochs
    after the first; memory the kernel reclaims under pressure, on top of the RAM tier), and
    lets the kernel open files without a request to this process (zero-message open).

    Always in the foreground of this process: libfuse's own daemonizing forks after the
    filesystem's threads (s3fs's event loop, the engine) exist, and a fork keeps none of
    them. ``tiercache mount --background`` starts a new process instead.
    """
    validation = fs.config.validation
    ttl = listing_ttl(validation.mode, validation.ttl_seconds)
    kernel_ttl = 0.0 if ttl == 0 else min(ttl, 3600.0)
    operations = TierCacheOperations(
        fs,
        root,
        readahead=readahead,
        mountpoint=os.path.abspath(mountpoint),
        zero_message_open=kernel_cache,
    )
    options: dict[str, Any] = {
        "ro": True,
        "default_permissions": True,
        "fsname": f"tiercache:{fs.origin.protocol}://{root}"[:200].replace(",", "_"),
        "subtype": "tiercache",
        "max_read": MAX_READ,
        "max_threads": threads,
        "max_idle_threads": threads,  # libfuse 3.14 warns about its own default otherwise
        # The kernel may keep attributes as long as our listings are considered fresh.
        "attr_timeout": kernel_ttl,
        "entry_timeout": kernel_ttl,
        "negative_timeout": min(kernel_ttl, 1.0),
    }
    if allow_other:
        options["allow_other"] = True
    if kernel_cache:
        # The page cache of a file is kept across opens while its size and mtime (the
        # origin's) stay the same, and dropped when they change: by the kernel itself once
        # opens no longer reach us (see ``open``), by libfuse at each open otherwise.
        options["auto_cache"] = True

    fuse = _fuse_class()
    try:
        fuse(operations, mountpoint, foreground=True, nothreads=False, debug=debug, **options)
    except RuntimeError:
        # libfuse3 reports a loop ended by SIGINT/SIGTERM/SIGHUP as a failure (status 8) too;
        # once the kernel has initialised the mount, that is how a mount normally ends.
        if not operations.initialized:
            raise
    finally:
        operations.destroy("/")
    log.info("unmounted %s", mountpoint)
