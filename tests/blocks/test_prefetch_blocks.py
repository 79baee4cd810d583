"""A large object in the readers' plan is prefetched block by block, like a shard is
prefetched whole: its reader then finds every block cached."""

from __future__ import annotations

import os
import time
from typing import Any

from tests.blocks.conftest import MiB, ranged_gets
from tests.conftest import S3, put_objects
from tiercache.blocks import records_for


def test_a_hinted_large_object_is_prefetched_as_blocks(
    bfs: Any, s3_server: S3, bucket: str
) -> None:
    body = os.urandom(2 * MiB)  # 8 blocks of 256 KiB
    put_objects(s3_server, bucket, {"big/weights.bin": body})
    path = f"{bucket}/big/weights.bin"
    key = f"s3://{path}"
    bfs.hint([path])
    index = bfs.cache.index
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        obj = records_for(index).get(key)
        if obj is not None and all(index.get(obj.block_key(i)) for i in range(obj.blocks)):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the hinted object's blocks were not prefetched")
    s3_server.start_counting()
    assert bfs.cat_file(path) == body
    assert ranged_gets(s3_server, "big/weights.bin") == []  # every block came from a tier
    assert bfs.stats()["prefetch"]["used"] >= obj.blocks
