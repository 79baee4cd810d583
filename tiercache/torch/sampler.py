"""Samplers that know about shards and tell the cache what comes next.

:class:`ShardShuffleSampler` shuffles the order of shards, then the samples within a window
of ``window`` shards at a time. A global shuffle touches every shard all the time, so any
cache smaller than the dataset thrashes; a window of shards keeps the working set to
``window`` shards while mixing samples from several sources in each batch. The order is a
pure function of ``(seed, epoch)``, so runs are reproducible and resumable mid-epoch
(:meth:`~ShardShuffleSampler.state_dict`).

Under ``DistributedSampler``-style sharding each rank takes every ``num_replicas``-th sample
of one global order: the ranks walk the same windows of shards at the same time, so one
fetch into the node cache serves all local ranks and their hints agree.

On several nodes (``num_nodes``, learned from torchrun's ``GROUP_RANK`` and
``LOCAL_WORLD_SIZE``), striding by global rank would make every node read every shard of
every window. Instead each epoch's global order is cut into one run of whole windows per
node, so each node reads a disjoint set of windows (a different one every epoch, the shard
permutation being reshuffled), and the ranks of a node stride through its windows: a node
reads 1/N of the data per epoch, and one fetch serves all of its ranks. The hint then also
carries the whole cluster's order, so that a node of a pooled ``[cluster]`` cache fetches
ahead the shards it owns that the other nodes are about to ask it for.

Both samplers call ``dataset.hint(order)`` at the start of each epoch (in the process that
iterates the sampler, the DataLoader's main process), which is what drives the engine's
prefetch and clairvoyant eviction.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler


class Hintable(Protocol):
    """What a sampler hints. With several nodes it also passes ``cluster=`` (every node's
    samples in the cluster's order): the tiercache datasets accept it."""

    def hint(self, indices: Sequence[int] | np.ndarray) -> None: ...


def _nodes(num_nodes: int | None, node_rank: int | None, num_replicas: int,
           rank: int) -> tuple[int, int]:  # fmt: skip
    """(nodes, this rank's node): as given, else from torchrun's environment, else one node."""
    env = os.environ
    if num_nodes is None:
        under_torchrun = "GROUP_RANK" in env and "LOCAL_WORLD_SIZE" in env
        if under_torchrun and int(env.get("WORLD_SIZE", "-1")) == num_replicas:
            local = int(env["LOCAL_WORLD_SIZE"])
            num_nodes = int(env.get("GROUP_WORLD_SIZE") or num_replicas // max(1, local))
            if node_rank is None:
                node_rank = int(env["GROUP_RANK"])
        else:
            num_nodes = 1
    if num_nodes < 1 or num_replicas % num_nodes:
        raise ValueError(
            f"num_nodes {num_nodes} must be >= 1 and divide num_replicas {num_replicas} "
            "(the same number of ranks on every node)"
        )
    local_world = num_replicas // num_nodes
    if node_rank is None:
        node_rank = rank // local_world
    if not 0 <= node_rank < num_nodes or rank // local_world != node_rank:
        raise ValueError(
            f"rank {rank} is not on node {node_rank} of {num_nodes} with {local_world} "
            "ranks per node (ranks must be numbered node by node, as torchrun does)"
        )
    return num_nodes, node_rank


def _world(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    if num_replicas is None:
        num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if rank is None:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"rank {rank} is not within num_replicas {num_replicas}")
    return num_replicas, rank


def shard_shuffle_order(shard_sizes: Sequence[int], seed: int, epoch: int, window: int,
                        shuffle: bool = True) -> np.ndarray:  # fmt: skip
    """The global sample order of one epoch: shards permuted, samples shuffled per window."""
    sizes = np.asarray(shard_sizes, dtype=np.int64)
    bounds = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=bounds[1:])
    if not shuffle:
        return np.arange(bounds[-1], dtype=np.int64)
    rng = np.random.Generator(np.random.PCG64([seed & 0xFFFFFFFF, epoch & 0xFFFFFFFF, 0x7C]))
    shards = rng.permutation(len(sizes))
    parts = []
    for w in range(0, len(shards), window):
        members = shards[w : w + window]
        idx = np.concatenate([np.arange(bounds[s], bounds[s + 1]) for s in members])
        rng.shuffle(idx)
        parts.append(idx)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


class ShardShuffleSampler(Sampler[int]):
    """Deterministic shard-aware shuffle with resume; hints the dataset each epoch.

    ``source`` is a tiercache dataset (anything with ``shard_sizes``, and ``hint`` for
    prefetch) or a plain sequence of samples-per-shard. ``window`` shards are mixed at a
    time (larger: more random, bigger working set). The epoch advances by itself after each
    complete pass; :meth:`set_epoch` sets it explicitly, as with ``DistributedSampler``.

    ``num_nodes`` and ``node_rank`` describe the nodes the ranks run on (default: from
    torchrun's environment, else one node); with several nodes each node reads its own
    windows (see the module's docstring). Ranks are numbered node by node.
    """

    def __init__(self, source: Any, *, shuffle: bool = True, seed: int = 0, window: int = 8,
                 num_replicas: int | None = None, rank: int | None = None,
                 drop_last: bool = False, hint: bool = True, num_nodes: int | None = None,
                 node_rank: int | None = None) -> None:  # fmt: skip
        sizes = getattr(source, "shard_sizes", source)
        self.shard_sizes = [int(s) for s in sizes]
        if any(s < 0 for s in self.shard_sizes):
            raise ValueError("shard sizes must be >= 0")
        if window < 1:
            raise ValueError(f"window must be >= 1 shard, got {window}")
        self.dataset = source if hasattr(source, "hint") else None
        self.shuffle = shuffle
        self.seed = int(seed)
        self.window = int(window)
        self.num_replicas, self.rank = _world(num_replicas, rank)
        self.num_nodes, self.node_rank = _nodes(num_nodes, node_rank, self.num_replicas, self.rank)
        self.local_world = self.num_replicas // self.num_nodes
        self.local_rank = self.rank % self.local_world
        self.drop_last = drop_last
        self.hint = hint
        total = sum(self.shard_sizes)
        if drop_last:
            self.num_samples = total // self.num_replicas
        else:
            self.num_samples = math.ceil(total / self.num_replicas) if total else 0
        self.epoch = 0
        self._start = 0  # where the next pass begins (resume)
        self._yielded = 0  # samples handed out in the current pass, resumed ones included
        self._finished = False
        self._explicit = False
        #: The next pass's (seed, epoch, offset) and remaining order: computed once, hinted once.
        self._planned: tuple[tuple[int, int, int], np.ndarray] | None = None
        self._plan_ahead()

    def _plan_ahead(self) -> None:
        """Hand the cache the next pass's order as soon as it is known.

        Called when the sampler is made, on ``set_epoch`` and on ``load_state_dict``, not
        only when iteration starts: a DataLoader starts its worker processes between
        ``iter(loader)`` and its first draw from the sampler, and that is time the cache can
        spend fetching the first shards.
        """
        if self.hint and self.dataset is not None:
            self._next_pass()

    def _next_pass(self) -> np.ndarray:
        """The next pass's remaining order, computed (and hinted) once however often asked."""
        epoch = self.epoch + (1 if self._finished and not self._explicit else 0)
        which = (self.seed, epoch, self._start)
        if self._planned is None or self._planned[0] != which:
            mine = self.order(epoch)[self._start :]
            if self.hint and self.dataset is not None and len(mine):
                if self.num_nodes == 1:
                    self.dataset.hint(mine)
                else:  # where the other nodes are at this point of the epoch, and onwards
                    everyone = self.cluster_order(epoch)[self._start * self.num_replicas :]
                    self.dataset.hint(mine, cluster=everyone)
            self._planned = which, mine
        return self._planned[1]

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._explicit = True
        self._finished = False
        self._start = 0
        self._plan_ahead()

    def _padded(self, epoch: int) -> np.ndarray:
        """The global order, cut or padded (wrapping, as DistributedSampler does) to
        ``num_samples`` for every rank."""
        order = shard_shuffle_order(self.shard_sizes, self.seed, epoch, self.window, self.shuffle)
        total = self.num_samples * self.num_replicas
        if len(order) > total:
            order = order[:total]
        elif len(order) < total:
            reps = math.ceil(total / len(order))
            order = np.tile(order, reps)[:total]
        return order

    def order(self, epoch: int | None = None) -> np.ndarray:
        """This rank's full sample order for ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        order = self._padded(epoch)
        if self.num_nodes == 1:
            return order[self.rank :: self.num_replicas]
        # One run of whole windows per node; the node's ranks stride through it.
        span = self.local_world * self.num_samples
        mine = order[self.node_rank * span : (self.node_rank + 1) * span]
        return mine[self.local_rank :: self.local_world]

    def node_order(self, node: int, epoch: int | None = None) -> np.ndarray:
        """Every sample node ``node`` reads in ``epoch``, in the order its ranks reach them."""
        epoch = self.epoch if epoch is None else epoch
        span = self.local_world * self.num_samples
        return self._padded(epoch)[node * span : (node + 1) * span]

    def cluster_order(self, epoch: int | None = None) -> np.ndarray:
        """The samples every node reads in ``epoch``, in the cluster's time order: the nodes
        advance through their windows side by side, so step ``i`` of every node comes before
        step ``i + 1`` of any."""
        epoch = self.epoch if epoch is None else epoch
        span = self.local_world * self.num_samples
        return self._padded(epoch).reshape(self.num_nodes, span).T.reshape(-1)

    def __iter__(self) -> Iterator[int]:
        mine = self._next_pass()
        self._planned = None  # the next pass, even of the same epoch again, is hinted anew
        if self._finished and not self._explicit:
            self.epoch += 1
        self._finished = False
        self._explicit = False
        start, self._start = self._start, 0
        self._yielded = start
        for i in mine.tolist():
            self._yielded += 1
            yield i
        self._finished = True

    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """Where this rank is: ``consumed`` samples of the current epoch are done.

        A DataLoader draws indices ahead of the training loop (``prefetch_factor`` batches
        per worker), so pass ``consumed = batches_done * batch_size`` from the loop; without
        it the count of indices handed out is used, which is exact only with
        ``num_workers=0``.
        """
        done = self._yielded if consumed is None else int(consumed)
        epoch = self.epoch
        if done >= self.num_samples:
            epoch, done = epoch + 1, 0
        return {"version": 1, "seed": self.seed, "epoch": epoch, "offset": done,
                "window": self.window, "num_replicas": self.num_replicas,
                "num_nodes": self.num_nodes, "shards": len(self.shard_sizes),
                "samples": sum(self.shard_sizes)}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next pass starts at the saved epoch and offset."""
        ours = {"window": self.window, "num_replicas": self.num_replicas,
                "num_nodes": self.num_nodes, "shards": len(self.shard_sizes),
                "samples": sum(self.shard_sizes)}  # fmt: skip
        for key, mine in ours.items():
            if key in state and state[key] != mine:
                raise ValueError(
                    f"cannot resume: the saved sampler had {key}={state[key]}, this one has "
                    f"{mine}; the order would differ"
                )
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self._start = int(state["offset"])
        if not 0 <= self._start <= self.num_samples:
            raise ValueError(f"saved offset {self._start} outside 0..{self.num_samples}")
        self._explicit = True
        self._finished = False
        self._yielded = self._start
        self._plan_ahead()


class HintedSampler(Sampler[int]):
    """Wrap any sampler (``RandomSampler``, ``DistributedSampler``...) to hint its order.

    Each pass materialises the wrapped sampler's indices once, hands them to
    ``dataset.hint``, then yields them; ``set_epoch`` is forwarded.
    """

    def __init__(self, sampler: Any, dataset: Hintable) -> None:
        self.sampler = sampler
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        indices = [int(i) for i in self.sampler]
        if indices:
            self.dataset.hint(indices)
        return iter(indices)
