"""``tiercache``: the fsspec filesystem users read through.

    fsspec.open("tiercache::s3://bucket/shard-00017.bin", tiercache={"config": "training"})
    TierCacheFileSystem(target_protocol="s3", target_options={...}, config="my.toml")

Reads go through the node's tiers (``cache.py``); listings and metadata come from the
origin, cached for the validation TTL. The read path from here downwards:
``TierCacheFileSystem.cat_file`` -> ``Cache.read`` -> ``Cache.locate`` -> index look-up ->
``TierStore.mapped``/``get`` (hit) or ``Engine.fetch`` -> ``Origin.fetch`` (miss).
"""

from __future__ import annotations

import os
import pickle
import posixpath
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import fsspec
from fsspec import AbstractFileSystem
from fsspec.implementations.chained import ChainedFileSystem

from . import cache as cache_module
from .blocks import LargeObject
from .cache import Blob, Cache, open_cache
from .config import Config, load_config
from .largefile import LargeFile, ReadOnlyFile
from .origin import Origin, OriginError
from .write.files import StagedFile
from .write.fsops import WriteOps


class TierCacheFileSystem(WriteOps, ChainedFileSystem):
    """An origin filesystem served through the node's cache tiers; writes are staged on
    local disk and uploaded in the background (``tiercache.write``)."""

    protocol = "tiercache"

    def __init__(
        self,
        config: Config | dict[str, Any] | str | os.PathLike[str] | None = None,
        target_protocol: str | None = None,
        target_options: dict[str, Any] | None = None,
        fs: AbstractFileSystem | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("fo", None)  # the chained URL's path; we are handed paths per call instead
        super().__init__(**kwargs)
        if fs is not None and target_protocol is not None:
            raise ValueError("give either fs= or target_protocol=, not both")
        if fs is None:
            if target_protocol is None:
                raise ValueError(
                    "tiercache needs an origin: target_protocol='s3' (with target_options) "
                    "or fs=<an fsspec filesystem>, or a chained URL 'tiercache::s3://bucket/key'"
                )
            fs = fsspec.filesystem(
                target_protocol, **origin_options(target_protocol, target_options)
            )
        self.fs = fs
        self.config = load_config(config)
        self.cache: Cache = open_cache(self.config)
        self._origin = self.cache.origin_for(fs)
        self._forks = cache_module.FORKS

        def _strip_protocol(path: Any) -> str:
            # Instance-level, as fsspec's own caching layers do: strip ours, then the origin's.
            path = fsspec.utils.stringify_path(path)
            if path.startswith("tiercache://"):
                path = path[len("tiercache://") :]
            if "::" in path:
                path = path.rsplit("::", 1)[-1]
            return self.fs._strip_protocol(path)

        self._strip_protocol: Callable[[Any], str] = _strip_protocol

    @property
    def origin(self) -> Origin:
        """The origin, re-created in a forked child: async filesystems (s3fs) cannot cross a
        fork, their event loop thread stays behind in the parent."""
        # Not fsspec's ``_pid``: fsspec resets that class attribute in the child as soon as
        # any filesystem is made there, so it cannot tell this instance crossed a fork.
        if self._forks != cache_module.FORKS:
            self.fs = pickle.loads(pickle.dumps(self.fs))
            self._origin = self.cache.origin_for(self.fs)
            self._forks = cache_module.FORKS
        return self._origin

    # -- reading ----------------------------------------------------------------------------------
    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        return self.cache.read(self.origin, self._strip_protocol(path), start, end)

    def cat(
        self, path: str | list[str], recursive: bool = False, on_error: str = "raise", **kwargs: Any
    ) -> bytes | dict[str, Any]:
        paths = self.expand_path(path, recursive=recursive)
        single = isinstance(path, str) and len(paths) == 1 and not _has_magic(path)
        if single:
            return self.cat_file(paths[0])
        self.warm(paths, progress=False, on_error="omit")
        out: dict[str, Any] = {}
        for p in paths:
            try:
                out[p] = self.cat_file(p)
            except Exception as exc:
                if on_error == "raise":
                    raise
                if on_error == "return":
                    out[p] = exc
        return out

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> TierCacheFile | LargeFile | StagedFile:
        path = self._strip_protocol(path)
        if mode != "rb":
            return self._open_write(path, mode, autocommit)
        try:
            return TierCacheFile(self, path, self.cache.locate(self.origin, path))
        except LargeObject as large:  # returns at once; blocks are fetched as it is read
            return LargeFile(self, path, large.obj)

    # -- metadata: from the origin, through brief listing caches ----------------------------------
    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        try:
            listing = self.origin.ls(path, max_age=0 if kwargs.get("refresh") else None)
        except (NotADirectoryError, FileNotFoundError):
            listing = self._with_writes(path, None)  # a directory only this node wrote to
            if listing is None:
                info = self.info(path)
                if info["type"] != "file":
                    raise
                listing = [info]
        else:
            listing = self._with_writes(path, listing)
        if not listing:
            # Object stores list a file as itself or as nothing; fsspec expects [info].
            info = self.info(path)
            listing = [info] if info["type"] == "file" else []
        return listing if detail else [i["name"] for i in listing]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        staged = self._staged_info(path)  # this node's writes, ahead of the origin
        if staged is not None:
            return staged
        parent = posixpath.dirname(path.rstrip("/"))
        try:
            if parent and parent != path:
                item = self.origin.listed(path)
                if item is not None:
                    return item
            return self.origin.call("info", path, lambda: self.fs.info(path))
        except (OriginError, FileNotFoundError):
            if self._pending_children(path):
                return {"name": path, "size": 0, "type": "directory"}
            key = self.origin.key(path)
            known = self.cache.index.get(key) or self.cache.blocks.records.get(key)
            if known is None:
                raise
            # Unreachable or stale-listed origin: what we cached is what we know.
            return {"name": path, "size": known.size, "type": "file", "cached": True}

    def invalidate_cache(self, path: str | None = None) -> None:
        self.origin.forget_listings()
        self.fs.invalidate_cache(path)

    # Writes (open "wb", pipe_file, put_file, rm, mv, touch, sync, transactions): WriteOps.

    # -- cache control ----------------------------------------------------------------------------
    def hint(
        self, paths: Sequence[str], stream: str = "", cluster: Sequence[str] | None = None
    ) -> None:
        """Tell the cache the order of upcoming reads: it prefetches them, and clairvoyant
        eviction (``belady``) plans with them.

        Every process's hints merge into the node's plan; a new hint replaces only this
        process's earlier one with the same ``stream`` label (use one label per dataset
        when a process reads several). ``cluster``: the reads of every node of a
        ``[cluster]`` in the cluster's order, so this node also prepares the keys it owns
        that other nodes will ask it for."""
        everyone = None if cluster is None else [self._strip_protocol(p) for p in cluster]
        self.cache.hint(self.origin, [self._strip_protocol(p) for p in paths], stream, everyone)

    def warm(
        self,
        paths: Iterable[str],
        *,
        progress: bool = True,
        on_error: str = "raise",
        concurrency: int | None = None,
    ) -> dict[str, Any]:
        """Fetch ``paths`` into the cache concurrently; returns {"objects", "bytes", "errors"}.

        ``paths`` are objects (a single path may be given as a string); expand a prefix with
        ``fs.find(prefix)`` first, as ``tiercache warm`` does.
        """
        from tqdm import tqdm

        if isinstance(paths, str):
            paths = [paths]  # not its characters
        targets = [self._strip_protocol(p) for p in paths]
        workers = concurrency or self.config.origin.concurrency
        done: dict[str, Any] = {"objects": 0, "bytes": 0, "errors": {}}
        bar = tqdm(total=len(targets), unit="obj", disable=not progress, desc="warming")
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tiercache-warm") as pool:
            futures = {pool.submit(self._warm_one, p): p for p in targets}
            for future in as_completed(futures):
                bar.update(1)
                try:
                    size = future.result()
                except Exception as exc:
                    if on_error == "raise":
                        for f in futures:
                            f.cancel()
                        raise
                    done["errors"][futures[future]] = f"{type(exc).__name__}: {exc}"
                    continue
                done["objects"] += 1
                done["bytes"] += size
                bar.set_postfix_str(f"{done['bytes'] / 2**20:.0f} MiB", refresh=False)
        bar.close()
        self.cache.flush_access()
        return done

    def _warm_one(self, path: str) -> int:
        """Fetch one object (every block of a large one); returns its size."""
        try:
            blob: Blob = self.cache.locate(self.origin, path)
        except LargeObject as large:
            self.cache.blocks.warm(self.origin, large.obj)
            return large.obj.size
        return blob.entry.size

    def stats(self) -> dict[str, Any]:
        """Node-wide totals: per tier hits, misses, entries, bytes; origin reads and bytes."""
        from .stats import collect

        return collect(self.cache)


def _has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def origin_options(protocol: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """s3fs reads AWS_ENDPOINT_URL itself only in new botocore; make it explicit."""
    options = dict(options or {})
    if protocol in ("s3", "s3a") and os.environ.get("AWS_ENDPOINT_URL"):
        client_kwargs = dict(options.get("client_kwargs") or {})
        if "endpoint_url" not in options and "endpoint_url" not in client_kwargs:
            options["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
    return options


class TierCacheFile(ReadOnlyFile):
    """A read-only, seekable file over one cached object.

    The blob was located and verified when the file was opened; a read is one copy out of
    the tier's shared mapping (or of bytes already in hand). Holding the mapping keeps the
    bytes readable even if the engine evicts the object meanwhile.
    """

    def __init__(self, fs: TierCacheFileSystem, path: str, blob: Blob) -> None:
        super().__init__(fs, path, blob.entry.size)
        self._blob = blob
        self._data: memoryview | None = memoryview(blob.data)

    def read(self, size: int | None = -1) -> bytes:
        if self._data is None:
            raise ValueError(f"I/O operation on closed file {self.path}")
        end = self.size if size is None or size < 0 else min(self.size, self._pos + size)
        if end <= self._pos:
            return b""
        data = bytes(self._data[self._pos : end])
        self._pos += len(data)
        self._count(len(data))
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        end = min(self.size, self._pos + len(view))
        n = max(0, end - self._pos)
        if n == 0:
            return 0
        if self._data is None:
            raise ValueError(f"I/O operation on closed file {self.path}")
        view[:n] = self._data[self._pos : end]
        self._pos += n
        self._count(n)
        return n

    def _count(self, n: int) -> None:
        """Bytes a tier delivered; a miss's bytes were counted as origin bytes already."""
        tier = self._blob.entry.tier
        if tier >= 0 and not self._blob.missed:
            self.fs.cache.counters.add("bytes_read", n, tier=tier)

    def close(self) -> None:
        if self._data is not None:
            self._data.release()
            self._data = None
        super().close()

    def __enter__(self) -> TierCacheFile:
        return self
