"""Faults on the wire during the ranged GETs of a large object (moto behind the fault proxy).

A whole read checks its blocks against the object's CRC32 (S3 keeps one for objects uploaded
with a checksum, which current SDKs do by default): a flipped bit in one ranged GET is
caught, every block read again, and the damaged bytes never returned. Once an object has
been verified, each block's CRC32 is kept, so a block fetched again later (after eviction)
is checked on its own. A stalled GET is abandoned after ``progress_timeout_seconds``
without a byte, however large the body.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import S3, put_objects
from tests.reliability.conftest import faulty_cache
from tests.reliability.faultproxy import Fault, FaultProxy

KiB = 1 << 10
MiB = 1 << 20
BLOCK = 256 * KiB


def _ranged(proxy: FaultProxy, key: str) -> list[str]:
    """Faults given to the ranged GETs of ``key`` (the aborted whole GET has no range, but
    the proxy cannot tell: it sees the signature's query only; count by what it did)."""
    return [
        s.fault for s in proxy.requests("GET", f"/{key}") if "X-Amz-SignedHeaders=host&" in s.query
    ]


def test_a_bit_flipped_in_a_ranged_get_is_caught_and_refetched(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, proxy: FaultProxy
) -> None:
    body = os.urandom(2 * MiB + 3)  # 9 blocks
    put_objects(s3_server, bucket, {"flip.bin": body})
    fs = faulty_cache(cache_dirs, proxy, origin={"block_size": BLOCK})
    # The first GET is the whole-object one, answered and abandoned at its headers; the
    # third ranged GET after it gets 16 flipped bytes in the middle of its body.
    proxy.add(Fault("alter", path=f"/{bucket}/flip.bin", skip=3))
    assert fs.cat_file(f"{bucket}/flip.bin") == body
    stats = fs.stats()
    assert stats["checksum_failures"] == 1
    assert "alter" in _ranged(proxy, f"{bucket}/flip.bin")
    assert stats["origin"]["bytes"] == 2 * len(body)  # every block read a second time
    assert fs.cat_file(f"{bucket}/flip.bin") == body  # what stayed cached is right too

    # Verified once: every block's CRC32 is known. A block fetched again after the cache
    # lost it is checked on its own, so a range read catches a flip too, and retries.
    fs.cache.engine.clear()
    proxy.clear()
    proxy.add(Fault("alter", path=f"/{bucket}/flip.bin"))
    before = fs.stats()["origin"]["retries"]
    assert (
        fs.cat_file(f"{bucket}/flip.bin", BLOCK + 5, BLOCK + 500) == body[BLOCK + 5 : BLOCK + 500]
    )
    assert fs.stats()["origin"]["retries"] == before + 1
    assert [f for f in _ranged(proxy, f"{bucket}/flip.bin")] == ["alter", "ok"]


def test_a_stalled_ranged_get_is_retried_after_the_progress_timeout(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, proxy: FaultProxy
) -> None:
    body = os.urandom(MiB)
    put_objects(s3_server, bucket, {"stall.bin": body})
    fs = faulty_cache(
        cache_dirs, proxy, origin={"block_size": BLOCK, "progress_timeout_seconds": 0.5}
    )
    # Half a body, then silence for a minute: only the progress timeout ends the wait.
    proxy.add(Fault("stall", path=f"/{bucket}/stall.bin", skip=2, delay=60))
    with fs.open(f"{bucket}/stall.bin") as f:
        assert f.read() == body
    assert fs.stats()["origin"]["retries"] == 1
    assert "stall" in _ranged(proxy, f"{bucket}/stall.bin")
