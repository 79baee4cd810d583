"""Large objects cached as blocks: what a reader of a multi-GB file relies on, at small sizes
(256 KiB blocks, objects of a few MiB, moto over HTTP on loopback)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.blocks.conftest import BLOCK, KiB, MiB, blocks_fs, ranged_gets
from tests.conftest import S3, put_objects
from tiercache.config import ConfigError, load_config
from tiercache.largefile import LargeFile


def test_a_range_read_fetches_only_the_blocks_it_covers(
    bfs: Any, s3_server: S3, bucket: str
) -> None:
    body = os.urandom(4 * MiB)  # 16 blocks
    put_objects(s3_server, bucket, {"big.bin": body})
    url = f"{bucket}/big.bin"
    s3_server.start_counting()
    assert (
        bfs.cat_file(url, 3 * BLOCK + 10, 3 * BLOCK + 10 + MiB // 4 - 20)
        == (body[3 * BLOCK + 10 : 3 * BLOCK + MiB // 4 - 10])
    )
    assert ranged_gets(s3_server, "big.bin") == [f"bytes={3 * BLOCK}-{4 * BLOCK - 1}"]
    # A range across a block boundary: its two blocks, one of which is cached already.
    assert (
        bfs.cat_file(url, 4 * BLOCK - 100, 4 * BLOCK + 100)
        == body[4 * BLOCK - 100 : 4 * BLOCK + 100]
    )
    assert len(ranged_gets(s3_server, "big.bin")) == 2
    stats = bfs.stats()
    assert stats["origin"]["bytes"] == 2 * BLOCK  # never the whole object
    assert stats["hits"] == 1 and stats["misses"] == 2  # counted per block
    # Reading it again costs the origin nothing.
    assert bfs.cat_file(url, 3 * BLOCK, 5 * BLOCK) == body[3 * BLOCK : 5 * BLOCK]
    assert len(ranged_gets(s3_server, "big.bin")) == 2
    # Negative offsets count from the end, as fsspec's cat_file does.
    assert bfs.cat_file(url, -100) == body[-100:]


def test_a_whole_read_is_parallel_ranged_gets_checked_against_the_origin_crc(
    bfs: Any, s3_server: S3, bucket: str
) -> None:
    body = os.urandom(3 * MiB + 77)
    put_objects(s3_server, bucket, {"w.bin": body})  # boto3 sends a CRC32; moto keeps it
    s3_server.start_counting()
    assert bfs.cat_file(f"{bucket}/w.bin") == body
    blocks = -(-len(body) // BLOCK)
    record = bfs.cache.blocks.records.get(f"s3://{bucket}/w.bin")
    ranges = ranged_gets(s3_server, "w.bin")
    spans = [record.span(i) for i in range(blocks)]
    assert sorted(ranges) == sorted(f"bytes={s}-{e - 1}" for s, e in spans)
    # Aligned to the end: the first block holds the remainder, the tail is whole blocks.
    assert spans[0] == (0, 77) and spans[-1] == (len(body) - BLOCK, len(body))
    assert record is not None and record.crc32 is not None
    assert record.crcs is not None and len(record.crcs) == blocks  # verified, block by block
    assert bfs.stats()["tiers"]["ram"]["entries"] + bfs.stats()["tiers"]["ssd"]["entries"] == blocks
    assert bfs.cat_file(f"{bucket}/w.bin") == body  # warm: from the tiers
    assert len(ranged_gets(s3_server, "w.bin")) == blocks


def test_small_objects_keep_the_whole_object_path(bfs: Any, s3_server: S3, bucket: str) -> None:
    body = os.urandom(BLOCK)  # exactly one block: cached whole, as before
    put_objects(s3_server, bucket, {"s.bin": body})
    s3_server.start_counting()
    assert bfs.cat_file(f"{bucket}/s.bin", 10, 20) == body[10:20]
    assert ranged_gets(s3_server, "s.bin") == []
    assert len(s3_server.requests("GET", "s.bin")) == 1
    assert bfs.cache.index.get(f"s3://{bucket}/s.bin") is not None
    assert bfs.cache.blocks.records.get(f"s3://{bucket}/s.bin") is None


def test_open_returns_at_once_and_fetches_as_the_file_is_read(
    bfs: Any, s3_server: S3, bucket: str
) -> None:
    body = os.urandom(6 * MiB)  # 24 blocks
    put_objects(s3_server, bucket, {"f.bin": body})
    s3_server.start_counting()
    with bfs.open(f"{bucket}/f.bin") as f:
        assert isinstance(f, LargeFile) and f.size == len(body)
        assert ranged_gets(s3_server, "f.bin") == []  # no block fetched by the open
        f.seek(5 * MiB)
        assert f.read(1000) == body[5 * MiB : 5 * MiB + 1000]
        assert len(ranged_gets(s3_server, "f.bin")) == 1
        f.seek(0)
        chunks = []
        while chunk := f.read(100 * KiB):  # a sequential reader: readahead starts
            chunks.append(chunk)
    assert b"".join(chunks) == body
    stats = bfs.stats()
    assert stats["prefetch"]["used"] > 0
    assert stats["origin"]["bytes"] == len(body)  # every block once, readahead included


def test_random_reads_of_an_open_file_never_read_ahead(
    bfs: Any, s3_server: S3, bucket: str
) -> None:
    body = os.urandom(4 * MiB)
    put_objects(s3_server, bucket, {"r.bin": body})
    with bfs.open(f"{bucket}/r.bin") as f:
        for block in (12, 3, 9, 0, 15):
            f.seek(block * BLOCK + 5)
            assert f.read(4 * KiB) == body[block * BLOCK + 5 : block * BLOCK + 5 + 4 * KiB]
    stats = bfs.stats()
    assert stats["prefetch"]["issued"] == 0
    assert stats["origin"]["bytes"] == 5 * BLOCK


def test_blocks_are_evicted_one_by_one_and_hot_ones_stay(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str
) -> None:
    """Two 2 MiB objects through a 1 MiB RAM tier and a 2 MiB SSD tier (LRU in both): the
    second object's blocks push the first one's out, block by block, except its first
    block, read between each of them (a hot row group of a cold file)."""
    fs = blocks_fs(cache_dirs, s3_server, ram=MiB, ssd=2 * MiB, promotion={"hits": 0})
    first, second = os.urandom(2 * MiB), os.urandom(2 * MiB)
    put_objects(s3_server, bucket, {"a.bin": first, "b.bin": second})
    assert fs.cat_file(f"{bucket}/a.bin") == first
    for block in range(8):
        assert (
            fs.cat_file(f"{bucket}/b.bin", block * BLOCK, (block + 1) * BLOCK)
            == (second[block * BLOCK : (block + 1) * BLOCK])
        )
        assert fs.cat_file(f"{bucket}/a.bin", 5, 15) == first[5:15]  # block 0 is hot
    fs.cache.engine.wait_idle()  # demotions are copied in the background
    stats = fs.stats()
    ram, ssd = stats["tiers"]["ram"], stats["tiers"]["ssd"]
    assert ram["used_bytes"] <= MiB and ssd["used_bytes"] <= 2 * MiB
    assert ram["demotions"] > 0 and ssd["evictions"] > 0
    s3_server.start_counting()
    assert fs.cat_file(f"{bucket}/a.bin", 0, 10) == first[:10]  # the hot block: still cached
    assert ranged_gets(s3_server, "a.bin") == []
    assert fs.cat_file(f"{bucket}/a.bin") == first  # the others were evicted: fetched again
    assert 0 < len(ranged_gets(s3_server, "a.bin")) < 8
    fs.cache.engine.check()


def test_an_object_larger_than_every_tier_streams_through_uncached(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str
) -> None:
    fs = blocks_fs(cache_dirs, s3_server, ram=MiB, ssd=2 * MiB)
    body = os.urandom(3 * MiB)
    put_objects(s3_server, bucket, {"huge.bin": body})
    assert fs.cat_file(f"{bucket}/huge.bin") == body
    assert fs.cat_file(f"{bucket}/huge.bin", MiB, MiB + 5) == body[MiB : MiB + 5]
    with fs.open(f"{bucket}/huge.bin") as f:
        assert f.read() == body
    stats = fs.stats()
    assert stats["tiers"]["ram"]["entries"] == 0 and stats["tiers"]["ssd"]["entries"] == 0
    assert stats["streamed"]["reads"] == 3
    assert stats["streamed"]["bytes"] == 2 * len(body) + BLOCK
    with pytest.raises(ValueError, match="larger than every tier"):
        fs.cache.blocks.warm(fs.origin, fs.cache.blocks.records.get(f"s3://{bucket}/huge.bin"))


def test_reads_from_both_tiers_by_range_and_whole(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str
) -> None:
    """The RAM tier holds part of the object, the SSD tier the rest (verify = always there):
    every way of reading gives the same bytes."""
    fs = blocks_fs(cache_dirs, s3_server, ram=MiB, ssd=8 * MiB, promotion={"hits": 0})
    body = os.urandom(3 * MiB + 5)
    put_objects(s3_server, bucket, {"t.bin": body})
    url = f"{bucket}/t.bin"
    assert fs.cat_file(url) == body
    fs.cache.engine.wait_idle()  # demotions are copied in the background
    record = fs.cache.blocks.records.get(f"s3://{url}")
    tiers = {fs.cache.index.get(record.block_key(i)).tier for i in range(record.blocks)}
    assert tiers == {0, 1}
    for _ in range(2):
        assert fs.cat_file(url) == body
        assert fs.cat_file(url, BLOCK - 3, 3 * MiB) == body[BLOCK - 3 : 3 * MiB]
        with fs.open(url) as f:
            view = bytearray(MiB)
            f.seek(2 * MiB)
            assert f.readinto(view) == MiB and bytes(view) == body[2 * MiB : 3 * MiB]
    assert fs.stats()["origin"]["bytes"] == len(body)


def test_a_changed_object_is_read_again_whole_never_mixed(
    bfs: Any, s3_server: S3, bucket: str
) -> None:
    old, new = os.urandom(2 * MiB), os.urandom(2 * MiB)
    put_objects(s3_server, bucket, {"v.bin": old})
    url = f"{bucket}/v.bin"
    assert bfs.cat_file(url, 0, 100) == old[:100]  # block 0 of the old version cached
    f = bfs.open(url)
    put_objects(s3_server, bucket, {"v.bin": new})  # same size: only the ETag tells
    # cat_file: the pinned GET of block 1 finds another version; the read starts again on
    # the new one, so no byte of the old version (block 0, still cached) is returned.
    assert bfs.cat_file(url) == new
    assert bfs.stats()["stale_refetches"] >= 1
    # An open handle pinned the old version and has blocks to fetch: a clear error.
    from tiercache.origin import OriginChangedError

    f.seek(5 * BLOCK)
    with pytest.raises(OriginChangedError, match="changed at the origin while open"):
        f.read(10)
    f.close()


def test_block_settings_are_checked() -> None:
    base = {"tiers": [{"name": "ram", "path": "/dev/shm/tc-never", "capacity": "1MiB"}]}
    config = load_config({**base, "origin": {"block_size": "32MiB", "block_concurrency": 4}})
    assert config.origin.block_size == 32 * MiB and config.origin.block_concurrency == 4
    with pytest.raises(ConfigError, match="origin.block_size"):
        load_config({**base, "origin": {"block_size": "1KiB"}})
    with pytest.raises(ConfigError, match="origin.block_concurrency"):
        load_config({**base, "origin": {"block_concurrency": 0}})
    with pytest.raises(ConfigError, match="origin.progress_timeout_seconds"):
        load_config({**base, "origin": {"progress_timeout_seconds": 0}})


def test_a_damaged_block_on_disk_is_a_miss_and_refetched(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str
) -> None:
    """The SSD tier hashes every block it serves: one flipped byte in one block file is
    found by the read that returns that block, which fetches it again, and only it."""
    fs = blocks_fs(cache_dirs, s3_server, ram=BLOCK, ssd=8 * MiB, promotion={"hits": 0})
    body = os.urandom(2 * MiB)
    put_objects(s3_server, bucket, {"rot.bin": body})
    url = f"{bucket}/rot.bin"
    assert fs.cat_file(url) == body
    fs.cache.engine.wait_idle()
    record = fs.cache.blocks.records.get(f"s3://{url}")
    entry = fs.cache.index.get(record.block_key(3))
    assert entry.tier == 1
    blob = fs.cache.stores[1].blob_path(entry.blob_id)
    damaged = bytearray(blob.read_bytes())
    damaged[1000] ^= 0x01
    blob.write_bytes(bytes(damaged))
    before = fs.stats()["origin"]["bytes"]
    assert fs.cat_file(url, 3 * BLOCK, 3 * BLOCK + 10) == body[3 * BLOCK : 3 * BLOCK + 10]
    assert fs.cat_file(url) == body
    stats = fs.stats()
    assert stats["checksum_failures"] == 1
    assert stats["origin"]["bytes"] - before == BLOCK  # that block alone, once
