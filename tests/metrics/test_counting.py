"""Counting: what ``fs.stats()`` and the exporter report is exactly what the reads did.

Each read's expected outcome is taken from the index just before it (hit at the tier that
holds the key, or a miss), so these tests check the counting, not a policy's choices.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import S3, put_objects
from tests.metrics.helpers import Samples, fs_for, scrape, tier_of, total, value, wait_until
from tiercache.metrics import serve

SIZE = 100_000  # above the small-object threshold: one blob file each


@pytest.fixture
def objects(s3_server: S3, bucket: str) -> dict[str, bytes]:
    objs = {f"o{i}": os.urandom(SIZE) for i in range(6)}
    put_objects(s3_server, bucket, objs)
    return objs


class Expected:
    """What the counters should say, worked out read by read."""

    def __init__(self, tiers: int) -> None:
        self.hits = [0] * tiers
        self.tier_bytes = [0] * tiers
        self.misses = 0
        self.origin_bytes = 0

    def read(self, fs: Any, bucket: str, key: str, body: bytes, how: str) -> None:
        fs.cache.engine.wait_idle()  # moves between tiers settle before we look
        tier = tier_of(fs, bucket, key)
        path = f"{bucket}/{key}"
        if how == "open":
            with fs.open(path, "rb") as f:
                data = f.read()
            want = body
        elif how == "range":
            data = fs.cat_file(path, start=10, end=1010)
            want = body[10:1010]
        else:
            data = fs.cat_file(path)
            want = body
        assert data == want
        if tier is None:
            self.misses += 1
            self.origin_bytes += len(body)  # the origin read is always the whole object
        else:
            self.hits[tier] += 1
            self.tier_bytes[tier] += len(want)

    @property
    def requests(self) -> int:
        return sum(self.hits) + self.misses


def exported(fs: Any) -> Samples:
    with serve(fs.cache.config, port=0) as server:
        assert server.url.startswith("http://127.0.0.1:")  # loopback unless configured
        return scrape(server.url)


def test_hits_misses_bytes_evictions_demotions(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, objects: dict[str, bytes]
) -> None:
    # RAM holds 3 objects, SSD 2; promotion effectively off so nothing moves behind our back.
    fs = fs_for(
        cache_dirs, s3_server, ram=3 * SIZE + 1000, ssd=2 * SIZE + 1000, promotion={"hits": 1000}
    )
    exp = Expected(2)
    for key in ["o0", "o1", "o2", "o3", "o4", "o5"]:
        exp.read(fs, bucket, key, objects[key], "cat")
    fs.cache.engine.wait_idle()
    stats = fs.stats()
    # LRU: o0..o2 were pushed down to SSD, which had room for two, so o0 left for good.
    assert stats["tiers"]["ram"]["demotions"] == 3
    assert stats["tiers"]["ssd"]["evictions"] == 1
    assert [tier_of(fs, bucket, f"o{i}") for i in range(6)] == [None, 1, 1, 0, 0, 0]

    how = ["open", "cat", "range"]
    for i, key in enumerate(["o5", "o4", "o2", "o0", "o3", "o5", "o1", "o1", "o2", "o0"]):
        exp.read(fs, bucket, key, objects[key], how[i % 3])
    assert exp.misses >= 7 and exp.hits[0] >= 3 and exp.hits[1] >= 2  # the workload mixes

    stats = fs.stats()
    ram, ssd = stats["tiers"]["ram"], stats["tiers"]["ssd"]
    assert stats["requests"] == exp.requests == 16
    assert stats["misses"] == exp.misses
    assert [ram["hits"], ssd["hits"]] == exp.hits
    assert ram["misses"] == exp.requests - exp.hits[0]  # reached RAM, not answered there
    assert ssd["misses"] == exp.misses
    assert [ram["bytes_read"], ssd["bytes_read"]] == exp.tier_bytes
    assert stats["origin"]["bytes"] == exp.origin_bytes
    assert stats["origin"]["reads"] == exp.misses
    assert stats["origin"]["requests"]["get"] == {"ok": exp.misses, "not_found": 0, "error": 0}
    # Conservation: what entered a tier and has not left it is what it holds.
    assert ram["admissions"] - ram["demotions"] - ram["evictions"] == ram["entries"] == 3
    assert ram["demotions"] + ssd["admissions"] - ssd["evictions"] == ssd["entries"] == 2
    assert ram["promotions"] == ssd["promotions"] == 0

    m = exported(fs)
    assert value(m, "tiercache_requests_total", tier="ram", result="hit") == exp.hits[0]
    assert value(m, "tiercache_requests_total", tier="ssd", result="hit") == exp.hits[1]
    assert value(m, "tiercache_requests_total", tier="ssd", result="miss") == exp.misses
    assert total(m, "tiercache_requests_total") == exp.requests  # a miss is counted once
    assert value(m, "tiercache_tier_lookups_total", tier="ram") == exp.requests
    assert value(m, "tiercache_tier_lookups_total", tier="ssd") == exp.requests - exp.hits[0]
    assert value(m, "tiercache_bytes_read_total", tier="ram") == exp.tier_bytes[0]
    assert value(m, "tiercache_bytes_read_total", tier="ssd") == exp.tier_bytes[1]
    assert value(m, "tiercache_bytes_read_total", tier="origin") == exp.origin_bytes
    for name in ("ram", "ssd"):
        t = stats["tiers"][name]
        assert value(m, "tiercache_tier_entries", tier=name) == t["entries"]
        assert value(m, "tiercache_tier_used_bytes", tier=name) == t["used_bytes"]
        assert value(m, "tiercache_tier_capacity_bytes", tier=name) == t["capacity_bytes"]
        assert value(m, "tiercache_evictions_total", tier=name, reason="capacity") == t["evictions"]
        assert value(m, "tiercache_evictions_total", tier=name, reason="invalidated") == 0
    assert value(m, "tiercache_demotions_total", from_tier="ram", to_tier="ssd") == ram["demotions"]
    assert value(m, "tiercache_promotions_total", from_tier="ssd", to_tier="ram") == 0
    assert value(m, "tiercache_origin_requests_total", op="get", status="ok") == exp.misses
    assert value(m, "tiercache_origin_seconds_count") == exp.misses
    assert value(m, "tiercache_origin_seconds_bucket", le="+Inf") == exp.misses
    assert value(m, "tiercache_origin_seconds_sum") == pytest.approx(stats["origin"]["seconds"])
    assert value(m, "tiercache_data_wait_seconds_total") > 0
    # Labels are bounded vocabularies and tier names: never a key, a bucket or a path.
    label_values = {v for (_, items) in m for _, v in items}
    assert not any(bucket in v or "/" in v for v in label_values), label_values
    assert {"ram", "ssd", "origin", "hit", "miss", "capacity", "invalidated"} <= label_values


def test_promotion_is_counted_from_and_to(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, objects: dict[str, bytes]
) -> None:
    fs = fs_for(cache_dirs, s3_server, ram=2 * SIZE + 1000, ssd=8 * SIZE, promotion={"hits": 2})
    for key in ("o0", "o1", "o2"):
        fs.cat_file(f"{bucket}/{key}")
    fs.cache.engine.wait_idle()
    assert tier_of(fs, bucket, "o0") == 1
    fs.cat_file(f"{bucket}/o0")
    fs.cat_file(f"{bucket}/o0")  # the second SSD hit earns a promotion
    fs.cache.engine._housekeeping_once()
    wait_until(lambda: tier_of(fs, bucket, "o0") == 0, 10, "o0 promoted to RAM")
    stats = fs.stats()
    assert stats["tiers"]["ssd"]["promotions"] == 1
    assert stats["tiers"]["ssd"]["hits"] == 2
    m = exported(fs)
    assert value(m, "tiercache_promotions_total", from_tier="ssd", to_tier="ram") == 1
    # Making room for the promoted object pushed one RAM entry down.
    assert (
        value(m, "tiercache_demotions_total", from_tier="ram", to_tier="ssd")
        == (stats["tiers"]["ram"]["demotions"])
    )
    assert stats["tiers"]["ram"]["demotions"] == 2  # o0 on the third miss, o1 on promotion


def test_corrupt_blob_counts_checksum_failure_and_invalidation(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, objects: dict[str, bytes]
) -> None:
    # Land misses on the SSD tier, which checksums every read.
    fs = fs_for(cache_dirs, s3_server, admission={"tier": "ssd"})
    path = f"{bucket}/o3"
    assert fs.cat_file(path) == objects["o3"]
    entry = fs.cache.index.get(f"s3://{bucket}/o3")
    blob = fs.cache.stores[entry.tier].blob_path(entry.blob_id)
    raw = bytearray(blob.read_bytes())
    raw[123] ^= 0xFF
    blob.write_bytes(bytes(raw))
    assert fs.cat_file(path) == objects["o3"]  # never the wrong bytes: a miss and a repair
    stats = fs.stats()
    assert stats["checksum_failures"] == 1
    assert stats["misses"] == 2 and stats["hits"] == 0
    assert stats["tiers"]["ssd"]["invalidations"] == 1
    m = exported(fs)
    assert value(m, "tiercache_checksum_failures_total") == 1
    assert value(m, "tiercache_evictions_total", tier="ssd", reason="invalidated") == 1
    assert value(m, "tiercache_evictions_total", tier="ssd", reason="capacity") == 0
    assert value(m, "tiercache_origin_requests_total", op="get", status="ok") == 2


def test_origin_requests_by_op_and_status(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, objects: dict[str, bytes]
) -> None:
    fs = fs_for(cache_dirs, s3_server)
    with pytest.raises(FileNotFoundError):
        fs.cat_file(f"{bucket}/no-such-object")
    assert fs.origin.info(f"{bucket}/o1")["size"] == SIZE
    with pytest.raises(FileNotFoundError):
        fs.origin.info(f"{bucket}/missing-too")
    listing = fs.origin.ls(bucket, max_age=0)
    assert len(listing) == len(objects)
    m = exported(fs)
    assert value(m, "tiercache_origin_requests_total", op="get", status="not_found") == 1
    assert value(m, "tiercache_origin_requests_total", op="get", status="ok") == 0
    assert value(m, "tiercache_origin_requests_total", op="head", status="ok") == 1
    assert value(m, "tiercache_origin_requests_total", op="head", status="not_found") == 1
    assert value(m, "tiercache_origin_requests_total", op="list", status="ok") == 1
    assert total(m, "tiercache_origin_requests_total", status="error") == 0
    assert value(m, "tiercache_origin_errors_total") == 0
    # A missing object is an error for the caller, shown by the origin's not_found: it is
    # neither a hit nor a miss, so it cannot skew the hit ratio.
    assert total(m, "tiercache_requests_total") == 0


def test_serve_needs_a_port_and_binds_loopback(cache_dirs: dict[str, Path]) -> None:
    from tests.conftest import make_config

    config = make_config(cache_dirs)
    with pytest.raises(ValueError, match=r"\[metrics\] port"):
        serve(config)  # port 0 in the config means metrics are off
    with serve(config | {"metrics": {"port": 0, "bind": "127.0.0.1"}}, port=0) as server:
        assert server.bind == "127.0.0.1"
        m = scrape(server.url)
        assert total(m, "tiercache_requests_total") == 0
