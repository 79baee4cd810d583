"""The shard-aware shuffle: deterministic, windowed, split across ranks, resumable."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from torch.utils.data import DataLoader, DistributedSampler

from tests.torch import helpers
from tests.torch.conftest import TokenData
from tiercache.torch import HintedSampler, ShardShuffleSampler, TokenDataset

SIZES = [100, 37, 64, 1, 250, 80, 80, 12]


def test_order_is_a_permutation_fixed_by_seed_and_epoch() -> None:
    a = ShardShuffleSampler(SIZES, seed=5)
    b = ShardShuffleSampler(SIZES, seed=5)
    first = list(a)
    assert sorted(first) == list(range(sum(SIZES)))
    assert first == list(b)
    second = list(a)  # the epoch advances by itself after a complete pass
    assert a.epoch == 1 and second != first and sorted(second) == sorted(first)
    assert list(ShardShuffleSampler(SIZES, seed=6)) != first
    b.set_epoch(1)
    assert list(b) == second


def test_window_bounds_the_shards_in_use() -> None:
    bounds = np.cumsum([0, *SIZES])
    order = ShardShuffleSampler(SIZES, seed=1, window=2).order(0)
    shards = np.searchsorted(bounds, order, side="right") - 1
    # Shards are consumed window by window: once a window is done, it never comes back.
    seen_done: set[int] = set()
    current: set[int] = set()
    for s in shards:
        assert s not in seen_done
        if s not in current and len(current) == 2:
            seen_done |= current
            current = set()
        current.add(int(s))
    assert len(seen_done | current) == len(SIZES)


def test_no_shuffle_is_sequential() -> None:
    assert list(ShardShuffleSampler(SIZES, shuffle=False)) == list(range(sum(SIZES)))


@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_split_one_global_order(drop_last: bool) -> None:
    total = sum(SIZES)
    parts = [ShardShuffleSampler(SIZES, seed=2, num_replicas=3, rank=r, drop_last=drop_last)
             for r in range(3)]  # fmt: skip
    orders = [list(p) for p in parts]
    assert len({len(o) for o in orders}) == 1 and len(orders[0]) == len(parts[0])
    merged = [i for group in zip(*orders, strict=True) for i in group]
    glob = ShardShuffleSampler(SIZES, seed=2).order(0).tolist()
    if drop_last:
        assert merged == glob[: total // 3 * 3]
    else:
        assert set(merged) == set(range(total)) and merged[:total] == glob


def test_resume_mid_epoch_yields_the_rest() -> None:
    s = ShardShuffleSampler(SIZES, seed=9)
    s.set_epoch(4)
    full = list(s)
    s.set_epoch(4)
    it = iter(s)
    head = [next(it) for _ in range(123)]
    state = s.state_dict()
    assert state["epoch"] == 4 and state["offset"] == 123
    fresh = ShardShuffleSampler(SIZES, seed=0)
    fresh.load_state_dict(state)
    assert head + list(fresh) == full
    assert fresh.epoch == 4
    assert list(fresh) == ShardShuffleSampler(SIZES, seed=9).order(5).tolist()


def test_resume_refuses_a_different_layout() -> None:
    state = ShardShuffleSampler(SIZES, window=4).state_dict()
    with pytest.raises(ValueError, match="window=4"):
        ShardShuffleSampler(SIZES, window=8).load_state_dict(state)


def test_state_at_the_end_of_an_epoch_points_at_the_next() -> None:
    s = ShardShuffleSampler(SIZES, seed=1)
    list(s)
    assert s.state_dict() == {**s.state_dict(), "epoch": 1, "offset": 0}


def test_resume_through_a_dataloader_with_workers(
    token_data: TokenData, torch_config: dict[str, Any]
) -> None:
    ds = TokenDataset(token_data.url, seq_len=helpers.SEQ, storage_options=token_data.options,
                      cache=torch_config)  # fmt: skip
    batch = 32

    def loader(sampler: ShardShuffleSampler) -> DataLoader[Any]:
        return DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=2,
                          multiprocessing_context="fork")  # fmt: skip

    sampler = ShardShuffleSampler(ds, seed=21)
    full = [b.numpy() for b in loader(sampler)]
    sampler.set_epoch(0)
    seen = []
    for step, b in enumerate(loader(sampler)):
        seen.append(b.numpy())
        if step == 9:
            state = sampler.state_dict(consumed=(step + 1) * batch)
            break
    resumed = ShardShuffleSampler(ds, seed=0)
    resumed.load_state_dict(state)
    seen += [b.numpy() for b in loader(resumed)]
    assert len(seen) == len(full)
    assert all(np.array_equal(a, b) for a, b in zip(seen, full, strict=True))


def test_hinted_sampler_wraps_distributed_sampler(
    token_data: TokenData, torch_config: dict[str, Any]
) -> None:
    ds = TokenDataset(token_data.url, seq_len=helpers.SEQ, storage_options=token_data.options,
                      cache=torch_config)  # fmt: skip
    hinted: list[list[int]] = []

    class Spy:
        def hint(self, indices: Any) -> None:
            hinted.append(list(indices))
            ds.hint(indices)

    inner = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=4)
    sampler = HintedSampler(inner, Spy())
    sampler.set_epoch(3)
    got = list(sampler)
    inner.set_epoch(3)
    assert got == list(inner) == hinted[0]
    rows = list(DataLoader(ds, batch_size=len(ds), sampler=sampler))
    assert len(rows[0]) == len(inner)
    assert ds.stats()["prefetch"]["issued"] > 0
