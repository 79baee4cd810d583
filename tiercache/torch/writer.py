"""Uploading shards to any fsspec URL, several at a time.

Writers here produce whole objects in memory (a shard is tens of MiB) and put them with a
small thread pool: object stores reward parallel PUTs, and a generator of shards keeps at
most ``concurrency`` of them in memory at once.
"""

from __future__ import annotations

import posixpath
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import fsspec


def put_objects(objects: Iterable[tuple[str, bytes]], url: str,
                storage_options: dict[str, Any] | None = None,
                concurrency: int = 8) -> list[str]:  # fmt: skip
    """Write ``(name, bytes)`` pairs under ``url``; returns the written URLs in order."""
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        fs.makedirs(root, exist_ok=True)
    slots = threading.Semaphore(max(1, concurrency))
    written: list[str] = []

    def put(path: str, data: bytes) -> None:
        try:
            fs.pipe_file(path, data)
        finally:
            slots.release()

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures: list[Future[None]] = []
        for name, data in objects:
            if ".." in name.split("/"):
                raise ValueError(f"shard name {name!r} must not climb out of {url}")
            path = posixpath.join(root.rstrip("/"), name) if root else name
            slots.acquire()
            futures.append(pool.submit(put, path, data))
            written.append(f"{url.rstrip('/')}/{name}")
        for future in futures:
            future.result()
    fs.invalidate_cache(root)
    return written
