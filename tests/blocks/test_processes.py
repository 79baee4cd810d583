"""Blocks across processes: N readers of one cold large object cause one GET per block,
and readers in processes other than the engine's read blocks from the shared tiers."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from tests.blocks import workers
from tests.blocks.conftest import BLOCK, MiB, blocks_config, ranged_gets
from tests.conftest import S3, put_objects


def digest(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_readers_in_several_processes_fetch_each_block_once(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, method: str
) -> None:
    body = os.urandom(2 * MiB + 100)  # 9 blocks
    put_objects(s3_server, bucket, {"shared.bin": body})
    config = blocks_config(cache_dirs)
    s3_server.start_counting()
    start_at = time.time() + (3.0 if method == "spawn" else 1.0)
    path = f"{bucket}/shared.bin"
    with mp.get_context(method).Pool(3) as pool:
        results = pool.starmap(
            workers.read_large, [(config, s3_server.options, path, start_at)] * 3
        )
    expected = {
        "whole": digest(body),
        "part": digest(body[300_000:900_000]),
        "handle": digest(body[1_000_000:1_500_000]),
    }
    for result in results:
        assert {k: result[k] for k in expected} == expected
    assert [r["engine"] for r in results].count("True") <= 1
    ranges = ranged_gets(s3_server, "shared.bin")
    assert sorted(ranges) == sorted(set(ranges))  # no block fetched twice
    assert len(ranges) == -(-len(body) // BLOCK)
