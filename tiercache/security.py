"""File-system hygiene: cache paths are private to their owner and refuse foreign ones."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path


class UnsafeCacheDirError(PermissionError):
    """A cache directory another user owns or anybody can write to."""


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (mode 0700) or check that an existing one is safe to use.

    Missing parents are created 0700 as well, whatever the umask: a tier or index path
    whose parents the cache created (``/data/cache/tiercache/ssd/index`` on a fresh disk)
    must not leave world-readable directories behind.

    A directory owned by another user, or writable by others (sticky or not: anyone could
    pre-create ``small.lmdb`` or ``index.lmdb`` in it), could be used to feed this process
    forged entries; we refuse it with a message saying what to do instead.
    """
    missing: list[Path] = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue  # another process made it meanwhile; checked below if it is ours
        with contextlib.suppress(OSError):
            os.chmod(directory, 0o700)  # mkdir's mode was narrowed by the umask, not widened
    st = path.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeCacheDirError(f"cache path {path} exists and is not a directory")
    if st.st_uid != os.geteuid():
        raise UnsafeCacheDirError(
            f"cache directory {path} is owned by uid {st.st_uid}, not by this user "
            f"(uid {os.geteuid()}); choose a path of your own in the config"
        )
    if st.st_mode & stat.S_IWOTH:
        raise UnsafeCacheDirError(
            f"cache directory {path} is world-writable; run `chmod 700 {path}` or choose "
            "another path (a subdirectory of your own, such as /dev/shm/tiercache-$USER)"
        )
