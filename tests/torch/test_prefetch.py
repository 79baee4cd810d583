"""Sampler-driven prefetch: the hint fetches ahead, so readers wait less for bytes."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from tests.conftest import S3, make_config
from tests.torch import helpers
from tiercache.cache import close_all
from tiercache.torch import ShardShuffleSampler, TokenDataset, write_tokens

SHARDS = 64


def _epoch_with_slow_consumer(url: str, options: dict[str, Any], config: dict[str, Any],
                              hint: bool) -> dict[str, Any]:  # fmt: skip
    ds = TokenDataset(url, seq_len=helpers.SEQ, storage_options=options, cache=config)
    sampler = ShardShuffleSampler(ds, seed=1, window=2, hint=hint)
    # One worker process reads; this process hints and runs the engine.
    for _ in DataLoader(ds, batch_size=64, sampler=sampler, num_workers=1):
        time.sleep(0.005)  # the model step: time the prefetcher uses to run ahead
    ds.close()
    return ds.stats()


def test_prefetch_cuts_data_wait(s3_server: S3, bucket: str, tmp_path: Path) -> None:
    url = f"s3://{bucket}/many"
    write_tokens(helpers.tokens(SHARDS), url, shard_bytes=helpers.SHARD_TOKENS * 2,
                 storage_options=s3_server.options)  # fmt: skip
    results = {}
    for hint in (False, True):
        dirs = {"ram": Path(f"/dev/shm/tiercache-test-pf-{tmp_path.name}-{hint}"),
                "ssd": tmp_path / f"ssd-{hint}"}  # fmt: skip
        try:
            # validation "never": no listing requests, so the counter holds waits for bytes
            config = make_config(dirs, ram="8MiB", ssd="8MiB", validation={"mode": "never"})
            results[hint] = _epoch_with_slow_consumer(url, s3_server.options, config, hint)
        finally:
            close_all()
            shutil.rmtree(dirs["ram"], ignore_errors=True)
    cold, hinted = results[False], results[True]
    assert cold["prefetch"]["issued"] == 0 and cold["misses"] == SHARDS
    assert hinted["prefetch"]["issued"] > 0 and hinted["prefetch"]["used"] > 0
    # Each configuration read every shard from the origin exactly once...
    assert cold["origin"]["reads"] == hinted["origin"]["reads"] == SHARDS
    # ...but with the hint the reader found nearly all of them already cached.
    assert hinted["misses"] < SHARDS // 4
    # How much data-wait that saves is a timing, measured in benchmarks/dataloader.py, not
    # asserted here: on a loaded machine a wall-clock ratio is noise.
    print("data-wait s: cold", cold["data_wait_seconds"], "hinted", hinted["data_wait_seconds"])
