"""The node-aware shuffle: each node reads its own windows, different ones every epoch."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tiercache.torch import ShardShuffleSampler

SHARDS = [64] * 32  # 32 shards, windows of 4: 8 windows, 2 per node on 4 nodes
WINDOW = 4
BOUNDS = np.cumsum([0, *SHARDS])


def shards_of(samples: Any) -> set[int]:
    return {int(s) for s in np.searchsorted(BOUNDS, np.asarray(samples), side="right") - 1}


def sampler(node: int, local: int, nodes: int = 4, per_node: int = 2, **kw: Any) -> Any:
    return ShardShuffleSampler(SHARDS, seed=3, window=WINDOW, num_replicas=nodes * per_node,
                               rank=node * per_node + local, num_nodes=nodes, **kw)  # fmt: skip


def test_each_node_reads_a_disjoint_set_of_whole_windows_and_the_ranks_share_them() -> None:
    for epoch in range(3):
        per_node = []
        for node in range(4):
            ranks = [sampler(node, local) for local in range(2)]
            for r in ranks:
                r.set_epoch(epoch)
            orders = [list(r) for r in ranks]
            assert not set(orders[0]) & set(orders[1])  # the ranks split the node's samples
            shards = shards_of(orders[0] + orders[1])
            assert shards_of(orders[0]) == shards_of(orders[1]) == shards  # same windows
            assert len(shards) == 2 * WINDOW
            per_node.append(shards)
        assert set().union(*per_node) == set(range(len(SHARDS)))  # the whole dataset
        assert sum(len(s) for s in per_node) == len(SHARDS)  # disjoint


def test_a_node_reads_other_windows_every_epoch() -> None:
    s = sampler(1, 0)
    seen = [shards_of(s.node_order(1, epoch)) for epoch in range(4)]
    assert len({frozenset(x) for x in seen}) == 4


def test_the_hint_carries_the_nodes_reads_and_the_clusters_order() -> None:
    hints: list[tuple[Any, Any]] = []

    class Recorder:
        shard_sizes = SHARDS

        def hint(self, indices: Any, cluster: Any = None) -> None:
            hints.append((np.asarray(indices), np.asarray(cluster)))

    s = ShardShuffleSampler(Recorder(), seed=3, window=WINDOW, num_replicas=4, rank=1,
                            num_nodes=4)  # fmt: skip
    mine, everyone = hints[-1]
    assert list(mine) == list(s.order(0))
    assert sorted(everyone.tolist()) == list(range(sum(SHARDS)))
    # Time order: step i of every node comes before step i + 1 of any.
    steps = {node: s.node_order(node, 0).tolist() for node in range(4)}
    assert everyone[:4].tolist() == [steps[n][0] for n in range(4)]
    assert everyone[4:8].tolist() == [steps[n][1] for n in range(4)]


def test_one_node_is_the_old_global_stride() -> None:
    for rank in range(3):
        one = ShardShuffleSampler(SHARDS, seed=1, num_replicas=3, rank=rank, num_nodes=1)
        plain = ShardShuffleSampler(SHARDS, seed=1, num_replicas=3, rank=rank)
        assert list(one) == list(plain)


def test_the_layout_comes_from_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"GROUP_RANK": "1", "LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "4",
           "GROUP_WORLD_SIZE": "2", "LOCAL_RANK": "1"}  # fmt: skip
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = ShardShuffleSampler(SHARDS, seed=1, num_replicas=4, rank=3)
    assert (s.num_nodes, s.node_rank, s.local_rank) == (2, 1, 1)
    with pytest.raises(ValueError, match="not on node"):
        ShardShuffleSampler(SHARDS, seed=1, num_replicas=4, rank=0)  # GROUP_RANK says node 1


def test_a_layout_that_does_not_divide_is_refused() -> None:
    with pytest.raises(ValueError, match="num_nodes 3 must"):
        ShardShuffleSampler(SHARDS, num_replicas=4, rank=0, num_nodes=3)
