"""One file per sample (images, audio clips, JSON documents) under a prefix.

Every file is its own shard, so the shard-aware shuffle degenerates to a plain shuffle;
use :class:`~tiercache.torch.sampler.HintedSampler` around a ``RandomSampler`` or
``DistributedSampler`` to pass the order to the cache. ``labels=True`` gives ImageFolder-style
class indices from the parent directory's name.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable
from typing import Any

from .base import ShardedDataset
from .source import CacheSpec, Source


class FileDataset(ShardedDataset):
    """Each file under ``url`` (optionally filtered by ``suffixes``) is one sample."""

    def __init__(self, url: str, *, suffixes: Iterable[str] | None = None,
                 decode: Callable[[bytes], Any] | None = None, labels: bool = False,
                 storage_options: dict[str, Any] | None = None,
                 cache: CacheSpec = True) -> None:  # fmt: skip
        self.source = Source(url, storage_options, cache)
        self.decode = decode
        ends = tuple(s.lower() for s in suffixes) if suffixes else None
        fs, root = self.source.fs, self.source.root
        found = fs.find(root, detail=True)
        paths = sorted(
            fs._strip_protocol(p) for p, info in found.items()
            if info.get("type", "file") == "file" and (ends is None or p.lower().endswith(ends))
        )  # fmt: skip
        if not paths:
            raise FileNotFoundError(f"no files{' ending ' + str(ends) if ends else ''} at {url}")
        self._set_shards(paths, [1] * len(paths))
        self.classes: list[str] = []
        self._labels: list[int] = []
        if labels:
            parents = [posixpath.basename(posixpath.dirname(p)) for p in paths]
            self.classes = sorted(set(parents))
            number = {c: i for i, c in enumerate(self.classes)}
            self._labels = [number[p] for p in parents]

    def __getitem__(self, index: int) -> Any:
        shard, _ = self.locate(index)
        data = self.source.read_all(self.shard_paths[shard])
        sample = self.decode(data) if self.decode is not None else data
        return (sample, self._labels[shard]) if self._labels else sample
