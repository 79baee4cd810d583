"""How prefetch starts against an origin that answers slowly (moto behind the fault proxy).

The first objects of a plan are the ones a reader waits for. When the listing a dataset
made sizes them, they are all requested at once, up to ``[prefetch] concurrency``; with no
size at hand the first is fetched alone, so that objects of unknown size never overrun the
byte budget in flight.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.conftest import S3, put_objects
from tests.reliability.conftest import faulty_cache
from tests.reliability.faultproxy import Fault, FaultProxy, wait_until

KiB = 1 << 10
SLOW = 3.0  # seconds the proxy holds every GET of the objects


def _plan(cache_dirs: dict[str, Path], s3_server: S3, proxy: FaultProxy, bucket: str,
          list_first: bool) -> list[str]:  # fmt: skip
    objs = {f"pf/{i}.bin": os.urandom(256 * KiB) for i in range(6)}
    put_objects(s3_server, bucket, objs)
    fs = faulty_cache(cache_dirs, proxy, prefetch={"concurrency": 4})
    paths = [f"{bucket}/{k}" for k in objs]
    if list_first:
        fs.ls(f"{bucket}/pf")  # what a dataset does to find its shards
    proxy.add(Fault("slow", times=None, path="/pf/", delay=SLOW))
    fs.hint(paths)
    return paths


def test_prefetch_requests_the_first_objects_together_when_a_listing_sizes_them(
    cache_dirs: dict[str, Path], s3_server: S3, proxy: FaultProxy, bucket: str
) -> None:
    _plan(cache_dirs, s3_server, proxy, bucket, list_first=True)
    # All four are asked for while the first answer is still being held back.
    assert wait_until(lambda: len(proxy.requests("GET", "/pf/")) >= 4, timeout=SLOW / 2)
    assert len(proxy.requests("GET", "/pf/")) == 4  # never more than the concurrency


def test_prefetch_fetches_one_object_first_when_no_size_is_known(
    cache_dirs: dict[str, Path], s3_server: S3, proxy: FaultProxy, bucket: str
) -> None:
    _plan(cache_dirs, s3_server, proxy, bucket, list_first=False)
    assert wait_until(lambda: len(proxy.requests("GET", "/pf/")) >= 1, timeout=SLOW / 2)
    time.sleep(SLOW / 3)
    assert len(proxy.requests("GET", "/pf/")) == 1
