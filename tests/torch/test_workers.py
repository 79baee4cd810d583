"""Real DataLoaders with worker processes (fork and spawn) reading through one node cache."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
from torch.utils.data import DataLoader

from tests.conftest import S3
from tests.torch import helpers
from tests.torch.conftest import TokenData
from tiercache.torch import ShardShuffleSampler, TokenDataset


def _epoch(loader: DataLoader[Any]) -> list[np.ndarray]:
    rows: list[np.ndarray] = []
    for batch in loader:
        rows.extend(batch.numpy())
    return rows


def _check_epoch(rows: list[np.ndarray], order: list[int], data: TokenData) -> None:
    assert len(rows) == len(order)
    for row, i in zip(rows, order, strict=True):
        assert np.array_equal(row, helpers.expected_sample(data.tokens, i))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_workers_read_every_shard_from_s3_once(method: str, token_data: TokenData,
                                               torch_config: dict[str, Any],
                                               s3_server: S3) -> None:  # fmt: skip
    ds = TokenDataset(token_data.url, seq_len=helpers.SEQ, storage_options=token_data.options,
                      cache=torch_config)  # fmt: skip
    sampler = ShardShuffleSampler(ds, seed=3, window=4)
    loader = DataLoader(ds, batch_size=32, sampler=sampler, num_workers=2,
                        multiprocessing_context=method, persistent_workers=True)  # fmt: skip
    s3_server.start_counting()
    first = _epoch(loader)
    _check_epoch(first, sampler.order(0).tolist(), token_data)
    gets = [r for r in s3_server.requests("GET") if "/tokens/" in r.get("url", "")]
    # Worker processes and the prefetcher together: each shard came from S3 exactly once.
    assert len(gets) == token_data.shards, [r["url"] for r in gets]

    s3_server.start_counting()
    second = _epoch(loader)
    assert sampler.epoch == 1
    _check_epoch(second, sampler.order(1).tolist(), token_data)
    assert not [r for r in s3_server.requests("GET") if "/tokens/" in r.get("url", "")]
    stats = ds.stats()
    assert stats["origin"]["reads"] == token_data.shards
    assert stats["tiers"]["ram"]["hits"] + stats["tiers"]["ssd"]["hits"] > 0


def test_pin_memory_and_fresh_workers_every_epoch(
    token_data: TokenData, torch_config: dict[str, Any]
) -> None:
    ds = TokenDataset(token_data.url, seq_len=helpers.SEQ, storage_options=token_data.options,
                      cache=torch_config)  # fmt: skip
    sampler = ShardShuffleSampler(ds, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "pin_memory without an accelerator" on CPU torch
        loader = DataLoader(ds, batch_size=50, sampler=sampler, num_workers=2,
                            pin_memory=True, multiprocessing_context="fork")  # fmt: skip
        for epoch in range(2):
            rows = _epoch(loader)
            _check_epoch(rows, sampler.order(epoch).tolist(), token_data)


def test_worker_count_zero_and_three_agree(
    token_data: TokenData, torch_config: dict[str, Any]
) -> None:
    ds = TokenDataset(token_data.url, seq_len=helpers.SEQ, storage_options=token_data.options,
                      cache=torch_config)  # fmt: skip
    runs = []
    for workers in (0, 3):
        sampler = ShardShuffleSampler(ds, seed=11)
        loader = DataLoader(ds, batch_size=64, sampler=sampler, num_workers=workers)
        runs.append(np.stack(_epoch(loader)))
    assert np.array_equal(runs[0], runs[1])
