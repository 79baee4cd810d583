"""Where a dataset's bytes come from, in a form that survives pickling into worker processes.

A DataLoader pickles the dataset into every spawned worker (and a fork copies it), so a
dataset must not hold live handles: an LMDB environment, an s3fs event loop or an open file
descriptor from the parent is unusable in the child. :class:`Source` keeps only the URL, the
storage options and the cache config, and opens the filesystem lazily, once per process
(checked by pid, so a forked child reopens instead of sharing the parent's handles).

Reads of samples go through a small per-process table of open shard handles: opening a
shard locates it in the cache (index look-up, checksum check, a fetch on a miss) once, and
every sample read after that is a ``pread`` on the tier's file. That is what lets warm
epochs run at the speed of local files.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

from ..config import Config

#: What ``cache=`` accepts: a config (object, dict, TOML path or preset name); True for
#: ``$TIERCACHE_CONFIG`` or the ``default`` preset; False to read the origin directly
#: (baselines, debugging).
CacheSpec = Config | dict[str, Any] | str | os.PathLike[str] | bool


class Source:
    """A URL (``s3://bucket/prefix``, a directory, any fsspec URL) read through tiercache."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None,
                 cache: CacheSpec = True, *, max_open: int = 16,
                 open_options: dict[str, Any] | None = None) -> None:  # fmt: skip
        if not isinstance(url, str) or not url:
            raise ValueError(f"dataset url must be a non-empty string, got {url!r}")
        self.url = url
        self.storage_options = dict(storage_options or {})
        self.cache = cache
        self.max_open = max(1, max_open)
        #: Passed to ``fs.open`` for shard handles (e.g. ``{"cache_type": "none"}`` for s3fs).
        self.open_options = dict(open_options or {})
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._fs: AbstractFileSystem | None = None
        self._origin: AbstractFileSystem | None = None
        self._root = ""
        self._handles: OrderedDict[str, Any] = OrderedDict()

    # -- pickling: description only -------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "storage_options": self.storage_options,
            "cache": self.cache,
            "max_open": self.max_open,
            "open_options": self.open_options,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def __repr__(self) -> str:
        return f"Source({self.url!r}, cache={self.cache!r})"

    # -- filesystems, opened lazily per process ---------------------------------------------------
    def _check_process(self) -> None:
        if self._pid != os.getpid():
            # A forked child: the parent's handles are not ours to use (or close).
            self._reset()

    @property
    def origin(self) -> AbstractFileSystem:
        """The origin filesystem itself (listings, small header reads, writes)."""
        self._check_process()
        if self._origin is None:
            self._origin, self._root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        return self._origin

    @property
    def root(self) -> str:
        """The URL's path as the origin filesystem names it (no protocol)."""
        self.origin  # noqa: B018 - resolves the root as a side effect
        return self._root

    @property
    def fs(self) -> AbstractFileSystem:
        """The filesystem samples are read through: tiercache over the origin, or the origin."""
        self._check_process()
        if self._fs is None:
            origin = self.origin
            if self.cache is False:
                self._fs = origin
            else:
                from ..fs import TierCacheFileSystem

                config = None if self.cache is True else self.cache
                self._fs = TierCacheFileSystem(config=config, fs=origin, skip_instance_cache=True)
        return self._fs

    @property
    def cached(self) -> bool:
        return self.cache is not False

    def join(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}" if self.root else name

    # -- reading --------------------------------------------------------------------------------
    def read(self, path: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of ``path``, through an open handle kept for later reads."""
        self._check_process()
        handles = self._handles
        f = handles.get(path)
        if f is None:
            f = self.fs.open(path, "rb", **self.open_options)
            handles[path] = f
            while len(handles) > self.max_open:
                _, old = handles.popitem(last=False)
                old.close()
        else:
            handles.move_to_end(path)
        f.seek(start)
        data = f.read(end - start)
        if len(data) != end - start:
            raise OSError(f"{path}: short read at {start} ({len(data)} of {end - start} bytes)")
        return bytes(data)

    def read_all(self, path: str) -> bytes:
        """A whole object (one-file-per-sample datasets): no handle is kept."""
        return bytes(self.fs.cat_file(path))

    def close(self) -> None:
        """Close this process's shard handles (they are reopened on the next read)."""
        while self._handles:
            _, f = self._handles.popitem()
            f.close()

    # -- cache control ----------------------------------------------------------------------------
    def hint(self, paths: Sequence[str]) -> None:
        """Tell the cache the upcoming read order; a no-op when reading the origin directly.

        The dataset's URL names the plan, so a process's training and validation datasets
        each keep theirs in the node's merged plan."""
        fs = self.fs
        hint = getattr(fs, "hint", None)
        if hint is not None and paths:
            hint(list(paths), stream=self.url)

    def stats(self) -> dict[str, Any]:
        """The node cache's statistics (empty when reading the origin directly)."""
        stats = getattr(self.fs, "stats", None)
        return stats() if stats is not None else {}
