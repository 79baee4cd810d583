"""The staging directory: files being written, files waiting for upload, and the quota.

Layout under ``[write] path``:

* ``open/<token>``: a file being written. Its writer holds an exclusive ``flock`` on it for
  as long as it is open, which is how the sweeper tells a live writer's file from a dead
  one's (a writer killed mid-write leaves an unlocked file nobody refers to: swept, never
  uploaded: nothing partial ever reaches the origin).
* ``data/<token>``: a closed file, renamed here (and the directory fsynced) before its
  journal entry is committed. The journal entry owns it until the upload is verified.
* ``journal.lmdb``: see ``journal.py``.

Tokens are time-ordered and unique per process (``<ns>-<pid>-<random>``); never a key.

Back-pressure: the bytes staged (journal) plus the bytes of files being written (``open/``)
must stay within ``[write] capacity``. A writer checks before each step of writing; when
there is no room it waits, up to ``wait_seconds``, for the uploader to release space, then
raises ``OSError(ENOSPC)`` naming the quota. The check is shared by every process through
the files themselves, so a writer may overshoot by at most one step while others check.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..security import ensure_private_dir
from ..sizes import format_size
from .journal import Journal, open_journal
from .settings import WriteConfig

log = logging.getLogger("tiercache.write")


class Staging:
    """One write tier's staging directory and journal, in this process."""

    def __init__(self, config: WriteConfig, owner: str) -> None:
        self.config = config
        self.owner = owner
        self.root = config.path
        self.open_dir = self.root / "open"
        self.data_dir = self.root / "data"
        self._journal: Journal | None = None
        #: How much a writer may write between two quota checks.
        self.step = max(1 << 20, min(64 << 20, config.capacity // 16))

    @property
    def journal(self) -> Journal:
        """The journal, made (with the staging directories) by the first write. Nothing is
        created on disk before that: a process that only reads never touches the staging
        filesystem, which may be full."""
        if self._journal is None:
            for d in (self.root, self.open_dir, self.data_dir):
                ensure_private_dir(d)
            self._journal = open_journal(self.root, self.owner)
        return self._journal

    def existing_journal(self) -> Journal | None:
        """The journal if one was ever made (None: nothing was ever written here)."""
        if self._journal is None and not (self.root / "journal.lmdb").exists():
            return None
        return self.journal

    def abandon(self) -> None:
        """After fork, in the child: the parent's journal handle is not ours."""
        if self._journal is not None:
            self._journal.abandon()
            self._journal = None

    # -- files ------------------------------------------------------------------------------------
    def create(self) -> tuple[int, str]:
        """A new, empty staging file for one writer: (descriptor, token), locked by it."""
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        self.journal  # noqa: B018 - the directories and journal exist from the first write
        while True:
            token = f"{time.time_ns():x}-{os.getpid()}-{secrets.token_hex(4)}"
            fd = os.open(self.open_dir / token, flags, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)  # "a live writer has this open" (see sweep)
            if os.fstat(fd).st_nlink:
                return fd, token
            # The sweeper locked it in the instant before we did, took it for a dead
            # writer's file and deleted it: start another.
            os.close(fd)

    def open_path(self, token: str) -> Path:
        return self.open_dir / _checked(token)

    def data_path(self, token: str) -> Path:
        return self.data_dir / _checked(token)

    def publish(self, tokens: list[str]) -> None:
        """Move closed, fsynced files from ``open/`` to ``data/`` and make that durable."""
        for token in tokens:
            os.rename(self.open_path(token), self.data_path(token))
        fsync_dir(self.data_dir)

    @contextlib.contextmanager
    def linked(self, token: str) -> Iterator[str]:
        """A second name for a staged file (a rename in the cache: the new path's upload
        owns it, while the old one may still be uploading), for the caller to journal
        inside the ``with`` block. Until the block ends the file is locked, so the sweeper
        leaves the new name alone although no journal entry refers to it yet."""
        fd = os.open(self.data_path(token), os.O_RDONLY | os.O_NOFOLLOW)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # one inode: locks both names
            new = f"{time.time_ns():x}-{os.getpid()}-{secrets.token_hex(4)}"
            os.link(self.data_path(token), self.data_path(new))
            fsync_dir(self.data_dir)
            yield new
        finally:
            os.close(fd)

    def release(self, token: str) -> None:
        """Delete a staged file its journal entry no longer refers to."""
        with contextlib.suppress(FileNotFoundError):
            self.data_path(token).unlink()

    def discard_open(self, token: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.open_path(token).unlink()

    def held_by_writer(self, token: str) -> bool:
        """Whether a live writer still holds this staged file open (see :meth:`create`)."""
        for path in (self.open_path(token), self.data_path(token)):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            finally:
                os.close(fd)
            return False
        return False

    # -- the quota ------------------------------------------------------------------------------
    def open_bytes(self) -> int:
        total = 0
        for entry in os.scandir(self.open_dir):
            with contextlib.suppress(FileNotFoundError):
                total += entry.stat(follow_symlinks=False).st_size
        return total

    def used(self) -> int:
        """Bytes staged and awaiting upload, plus bytes being written, node-wide."""
        return self.journal.staged_bytes() + self.open_bytes()

    def reserve(self, need: int, own: int, kick: Callable[[], None]) -> None:
        """Wait until ``need`` more bytes fit in the quota and on the disk.

        ``own``: bytes this writer has staged already (an open file larger than the whole
        quota can never fit: that fails at once). ``kick`` makes sure an engine is
        uploading (waiting for space nobody frees would only time out).
        """
        capacity = self.config.capacity
        if own + need > capacity:
            raise OSError(
                errno.ENOSPC,
                f"staging quota exceeded: this file alone needs more than [write] capacity = "
                f"{format_size(capacity)} ({capacity} bytes) at {self.root}; raise the "
                "capacity or write smaller files",
            )
        deadline = time.monotonic() + self.config.wait_seconds
        kicked = False
        while True:
            used = self.used()
            free = disk_free(self.root)
            if used + need <= capacity and free >= need:
                return
            if not kicked:
                kick()
                kicked = True
            if time.monotonic() >= deadline:
                if used + need > capacity:
                    why = (
                        f"staging quota [write] capacity = {format_size(capacity)} "
                        f"({capacity} bytes) at {self.root} is full: {format_size(used)} staged "
                        "or being written, not yet uploaded"
                    )
                else:
                    why = f"the disk holding [write] path {self.root} is full"
                raise OSError(
                    errno.ENOSPC,
                    f"{why}; waited {self.config.wait_seconds:g} s ([write] wait_seconds) for "
                    "uploads to free space. Check `tiercache uploads` for failed uploads",
                )
            time.sleep(0.05)

    # -- orphans ----------------------------------------------------------------------------------
    def sweep(self) -> int:
        """Delete staged files nobody will upload: left by writers killed before ``close()``
        returned, or released but not deleted. Files a live writer holds are left alone.
        Returns how many were deleted."""
        removed = 0
        if self.existing_journal() is None:
            return 0
        referenced = self.journal.tokens()
        for directory in (self.open_dir, self.data_dir):
            for entry in os.scandir(directory):
                if entry.name in referenced:
                    continue
                path = Path(entry.path)
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
                except OSError:
                    continue
                try:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # a live writer (or a transaction not yet committed)
                    # Unlocked: its writer is gone or has committed; the journal says which.
                    if entry.name in self.journal.tokens():
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                    removed += 1
                finally:
                    os.close(fd)
        if removed:
            log.info("swept %d staged file(s) no journal entry refers to", removed)
        return removed


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def disk_free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _checked(token: str) -> str:
    if not token or "/" in token or token.startswith("."):
        raise ValueError(f"invalid staging token {token!r}")
    return token


def journal_of(staging: Staging | None) -> Journal | None:
    """The write journal of a cache's write tier, if it has one and anything was ever
    written there (readers of a cache that never wrote open nothing)."""
    return None if staging is None else staging.existing_journal()
