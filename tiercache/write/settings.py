"""The ``[write]`` section: where writes are staged, how much, and how they reach the origin.

Parsed here rather than in ``config.py`` so that the write tier's keys, defaults and checks
live beside the code that uses them; ``config.parse_config`` calls :func:`parse_write`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("tiercache.write")

#: ``write-back``: acknowledged once staged on local disk, uploaded in the background;
#: ``write-through``: ``close()`` also waits for the upload; ``read-only``: writes refused.
WRITE_MODES = ("write-back", "write-through", "read-only")
MiB = 1024**2
#: S3's limits on multipart parts (the last part may be smaller than the minimum).
MIN_PART = 5 * MiB
MAX_PART = 5 * 1024**3
MAX_PARTS = 10_000


@dataclass(frozen=True)
class WriteConfig:
    """The write tier: a staging directory on local disk with a byte quota."""

    path: Path
    capacity: int
    mode: str = "write-back"
    upload_concurrency: int = 8
    part_size: int = 32 * MiB
    #: How long a writer blocks when staging is full before ``OSError(ENOSPC)``.
    wait_seconds: float = 60.0
    #: How long a process that runs the engine waits at exit for its pending uploads
    #: (0: not at all; they stay staged and the next engine resumes them).
    exit_wait_seconds: float = 600.0

    @property
    def enabled(self) -> bool:
        return self.mode != "read-only"


def parse_write(reader: Any, tiers: tuple[Any, ...]) -> WriteConfig:
    """``[write]`` from ``reader`` (a ``config._Reader``); defaults derive from the last tier.

    Without a ``path``, writes are staged in ``<last tier>-write``, beside the slowest tier:
    on the same filesystem, so an uploaded file becomes a cache entry there by a link, but
    not inside a directory people delete to clear a cache (it may hold the only copy of a
    write not yet uploaded).
    """
    from ..config import _filesystem_size, _integer, _number, _path, _size

    raw = reader.pop("write", dict, default=None)
    sub = type(reader)(raw or {}, reader.origin, prefix="write.")
    text = sub.pop("path", str, default="")
    last = tiers[-1].path
    path = _path(text, "write.path") if text else last.with_name(f"{last.name}-write")
    total = _filesystem_size(path)
    capacity = _size(sub, "capacity", sub.pop("capacity", (int, str), default="10%"), total)
    mode = sub.pop("mode", str, default="write-back")
    if mode not in WRITE_MODES:
        raise sub.error("mode", mode, f"one of {', '.join(WRITE_MODES)}")
    concurrency = _integer(sub, "upload_concurrency", 8, minimum=1)
    part_size = _size(sub, "part_size", sub.pop("part_size", (int, str), default="32MiB"))
    if not MIN_PART <= part_size <= MAX_PART:
        raise sub.error("part_size", part_size, "between 5MiB and 5GiB (S3's part limits)")
    wait = _number(sub, "wait_seconds", 60.0, minimum=0)
    exit_wait = _number(sub, "exit_wait_seconds", 600.0, minimum=0)
    sub.done()
    if mode != "read-only" and str(path).startswith("/dev/shm"):
        log.warning(
            "%s: write.path %s is in memory: staged writes survive a crash of the process "
            "but not a reboot", reader.origin, path,
        )  # fmt: skip
    return WriteConfig(path, capacity, mode, concurrency, part_size, wait, exit_wait)
