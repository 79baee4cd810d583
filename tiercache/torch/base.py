"""What every tiercache dataset shares: samples grouped into shards, and hints.

A shard is one object at the origin (a token file, a record shard, or one file per
sample). Samples of a shard are numbered contiguously, so ``shard_bounds`` (cumulative
sample counts) maps a sample to its shard with one binary search, and a sampler that knows
``shard_sizes`` can shuffle shards first and samples within a few shards second.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from .source import Source


class ShardedDataset(Dataset[Any]):
    """A map-style dataset whose samples live in shards read through a :class:`Source`."""

    source: Source
    shard_paths: list[str]
    shard_sizes: list[int]

    def _set_shards(self, paths: Sequence[str], sizes: Sequence[int]) -> None:
        self.shard_paths = list(paths)
        self.shard_sizes = [int(s) for s in sizes]
        self.shard_bounds = np.zeros(len(self.shard_sizes) + 1, dtype=np.int64)
        np.cumsum(self.shard_sizes, out=self.shard_bounds[1:])

    def __len__(self) -> int:
        return int(self.shard_bounds[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(shard number, sample number within the shard) of a sample."""
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"sample {index} out of range for a dataset of {n} samples")
        shard = int(np.searchsorted(self.shard_bounds, index, side="right")) - 1
        return shard, index - int(self.shard_bounds[shard])

    def shard_order(self, indices: Sequence[int] | np.ndarray) -> list[int]:
        """Shards in the order ``indices`` first touch them."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            return []
        shards = np.searchsorted(self.shard_bounds, idx, side="right") - 1
        _, first = np.unique(shards, return_index=True)
        return [int(s) for s in shards[np.sort(first)]]

    def hint(
        self, indices: Sequence[int] | np.ndarray, cluster: Sequence[int] | np.ndarray | None = None
    ) -> None:
        """Pass the upcoming sample order to the cache as the shard paths it will read.

        The engine prefetches the missing shards ahead of the readers (bounded by
        ``[prefetch] depth_bytes``) and clairvoyant eviction (``belady``) plans with the
        order. Call it from the main process, once per epoch: samplers in this package do.
        ``cluster``: the samples every node reads, in the cluster's order (a node-aware
        :class:`~tiercache.torch.ShardShuffleSampler` passes it), so that a node of a
        ``[cluster]`` also fetches ahead the shards it owns that other nodes will ask for.
        """
        paths = [self.shard_paths[s] for s in self.shard_order(indices)]
        if cluster is None:
            self.source.hint(paths)
        else:
            everyone = [self.shard_paths[s] for s in self.shard_order(cluster)]
            self.source.hint(paths, cluster=everyone)

    def stats(self) -> dict[str, Any]:
        """The node cache's statistics (``TierCacheFileSystem.stats()``)."""
        return self.source.stats()

    def close(self) -> None:
        """Close this process's open shard handles."""
        self.source.close()
