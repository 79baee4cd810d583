"""Bytes through tiercache are the origin's bytes: whole, ranged, via every entry point."""

from __future__ import annotations

import os
from typing import Any

import fsspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import S3, make_config, put_objects


@pytest.fixture
def objects(s3_server: S3, bucket: str) -> dict[str, bytes]:
    rng = __import__("random").Random(7)
    objs = {
        f"shards/shard-{i:05d}.bin": rng.randbytes(rng.choice([1, 1000, 70_000, 1 << 20]))
        for i in range(6)
    }
    objs["small/hello.txt"] = b"hello world"
    objs["empty"] = b""
    put_objects(s3_server, bucket, objs)
    return objs


def test_chained_url_reads_origin_bytes(
    objects: dict[str, bytes], bucket: str, s3_server: S3, config: dict[str, Any]
) -> None:
    url = f"tiercache::s3://{bucket}/shards/shard-00003.bin"
    with fsspec.open(url, tiercache={"config": config}, s3=s3_server.options) as f:
        assert f.read() == objects["shards/shard-00003.bin"]
    with fsspec.open(url, tiercache={"config": config}, s3=s3_server.options) as f:
        f.seek(3)
        assert f.read(5) == objects["shards/shard-00003.bin"][3:8]


def test_cat_file_whole_and_ranges(tcfs: Any, objects: dict[str, bytes], bucket: str) -> None:
    for key, body in objects.items():
        assert tcfs.cat_file(f"{bucket}/{key}") == body  # miss
        assert tcfs.cat_file(f"s3://{bucket}/{key}") == body  # hit, URL form
        assert tcfs.cat_file(f"{bucket}/{key}", start=-5) == body[-5:]
        assert tcfs.cat_file(f"{bucket}/{key}", start=2, end=9) == body[2:9]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_random_ranges_match_origin(
    tcfs: Any, objects: dict[str, bytes], bucket: str, data: st.DataObject
) -> None:
    key = data.draw(st.sampled_from(sorted(objects)))
    body = objects[key]
    n = len(body)
    start = data.draw(st.integers(-n - 3, n + 3))
    end = data.draw(st.one_of(st.none(), st.integers(-n - 3, n + 3)))
    assert tcfs.cat_file(f"{bucket}/{key}", start=start, end=end) == body[start:end]
    with tcfs.open(f"{bucket}/{key}", "rb") as f:
        offset = data.draw(st.integers(0, n + 2))
        length = data.draw(st.integers(-1, n + 2))
        f.seek(offset)
        expected = body[offset:] if length < 0 else body[offset : offset + length]
        assert f.read(length) == expected
        assert f.tell() == min(n, offset + len(expected)) if expected else True


def test_file_object_protocol(tcfs: Any, objects: dict[str, bytes], bucket: str) -> None:
    body = objects["shards/shard-00004.bin"]
    with tcfs.open(f"{bucket}/shards/shard-00004.bin") as f:
        assert f.seekable() and f.readable()
        assert f.size == len(body)
        f.seek(-10, os.SEEK_END)
        assert f.read() == body[-10:]
        f.seek(0)
        buf = bytearray(100)
        assert f.readinto(buf) == min(100, len(body))
        assert bytes(buf[: len(body[:100])]) == body[:100]
    assert f.closed


def test_cat_many_paths_and_listings(tcfs: Any, objects: dict[str, bytes], bucket: str) -> None:
    out = tcfs.cat(f"{bucket}/shards/*.bin")
    assert out == {f"{bucket}/{k}": v for k, v in objects.items() if k.startswith("shards/")}
    assert sorted(tcfs.find(bucket)) == sorted(f"{bucket}/{k}" for k in objects)
    assert tcfs.info(f"{bucket}/small/hello.txt")["size"] == 11
    assert tcfs.exists(f"{bucket}/empty") and not tcfs.exists(f"{bucket}/nope")
    assert tcfs.ls(f"{bucket}/small", detail=False) == [f"{bucket}/small/hello.txt"]
    assert tcfs.glob(f"{bucket}/shards/shard-0000[12].bin") == [
        f"{bucket}/shards/shard-00001.bin",
        f"{bucket}/shards/shard-00002.bin",
    ]


def test_missing_object_names_the_path(tcfs: Any, bucket: str, objects: dict[str, bytes]) -> None:
    with pytest.raises(FileNotFoundError, match=f"{bucket}/no/such/object"):
        tcfs.cat_file(f"{bucket}/no/such/object")
    with pytest.raises(FileNotFoundError, match="no/such/object"):
        tcfs.open(f"{bucket}/no/such/object")


def test_writes_refused_with_the_write_tier_off(
    cache_dirs: dict[str, Any], s3_server: S3, bucket: str, objects: dict[str, bytes]
) -> None:
    """``[write] mode = "read-only"`` keeps the old behaviour: every write is refused with
    an error naming the setting, and nothing reaches the origin."""
    from tiercache import TierCacheFileSystem

    config = make_config(cache_dirs, write={"mode": "read-only"})
    fs = TierCacheFileSystem(config=config, target_protocol="s3", target_options=s3_server.options)
    with pytest.raises(PermissionError, match='mode = "read-only"'):
        fs.open(f"{bucket}/x", "wb")
    with pytest.raises(PermissionError, match='mode = "read-only"'):
        fs.rm(f"{bucket}/empty")
    with pytest.raises(PermissionError, match='mode = "read-only"'):
        fs.mv(f"{bucket}/empty", f"{bucket}/moved")
    assert fs.cat_file(f"{bucket}/empty") == objects["empty"]
    keys = [o["Key"] for o in s3_server.client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert "x" not in keys and "moved" not in keys


def test_hit_and_miss_counting(
    tcfs: Any, bucket: str, objects: dict[str, bytes], s3_server: S3
) -> None:
    key = f"{bucket}/shards/shard-00005.bin"
    size = len(objects["shards/shard-00005.bin"])
    s3_server.start_counting()
    tcfs.cat_file(key)
    for _ in range(3):
        tcfs.cat_file(key)
    with tcfs.open(key) as f:  # one open is one request, however many reads
        f.read(1)
        f.read(1)
    stats = tcfs.stats()
    assert stats["requests"] == 5
    assert stats["misses"] == 1
    assert stats["tiers"]["ram"]["hits"] == 4
    assert stats["tiers"]["ram"]["entries"] == 1
    assert stats["origin"]["reads"] == 1 and stats["origin"]["bytes"] == size
    assert len(s3_server.requests("GET", "shards/shard-00005.bin")) == 1
