"""A tier wiped under a live cache (a job epilogue emptying /dev/shm) costs refetches, never a
failed read: a blob missing under its entry is a miss that drops the entry."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from tests.conftest import S3, make_config, put_objects
from tiercache import TierCacheFileSystem

KiB = 1 << 10


def test_reads_after_dev_shm_is_wiped_refetch_and_cache_again(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str
) -> None:
    # Large objects are files of their own; small ones live in the tier's small.lmdb.
    objs = {f"w/big{i}": os.urandom(512 * KiB) for i in range(3)}
    objs |= {f"w/small{i}": os.urandom(2 * KiB) for i in range(3)}
    put_objects(s3_server, bucket, objs)
    fs = TierCacheFileSystem(
        config=make_config(cache_dirs, validation={"mode": "never"}),
        target_protocol="s3",
        target_options=s3_server.options,
    )
    paths = {f"{bucket}/{k}": v for k, v in objs.items()}
    for path, body in paths.items():
        assert fs.cat_file(path) == body
    assert fs.stats()["tiers"]["ram"]["entries"] == len(objs)

    shutil.rmtree(cache_dirs["ram"])  # what a scheduler's epilogue does to /dev/shm

    for path, body in paths.items():  # every read still exact: refetched from the origin
        assert fs.cat_file(path) == body
    stats = fs.stats()
    assert stats["misses"] == 2 * len(objs)
    # The tier is back, holding what was refetched, and serving it again.
    deadline = time.monotonic() + 10
    while fs.stats()["tiers"]["ram"]["entries"] < len(objs) and time.monotonic() < deadline:
        for path in paths:
            fs.cat_file(path)
        time.sleep(0.1)
    for path, body in paths.items():
        assert fs.cat_file(path) == body
    assert fs.stats()["tiers"]["ram"]["entries"] == len(objs)
    assert fs.cache.engine.verify()["ok"]
