"""File-system hygiene: cache paths are private to their owner and refuse foreign ones."""

from __future__ import annotations

import os
import stat
from pathlib import Path


class UnsafeCacheDirError(PermissionError):
    """A cache directory another user owns or anybody can write to."""


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (mode 0700) or check that an existing one is safe to use.

    A directory owned by another user, or writable by others, could be used to feed this
    process forged blobs; we refuse it with a message saying what to do instead.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=False)
        return
    except FileExistsError:
        pass
    st = path.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeCacheDirError(f"cache path {path} exists and is not a directory")
    if st.st_uid != os.geteuid():
        raise UnsafeCacheDirError(
            f"cache directory {path} is owned by uid {st.st_uid}, not by this user "
            f"(uid {os.geteuid()}); choose a path of your own in the config"
        )
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise UnsafeCacheDirError(
            f"cache directory {path} is world-writable; run `chmod 700 {path}` or choose "
            "another path"
        )
