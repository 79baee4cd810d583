"""An origin that fails: 5xx, throttling, resets, stalls, slow answers, damaged bodies.

Every fault is real bytes on a real socket (``faultproxy.FaultProxy`` in front of moto).
Transient faults must be retried until the read succeeds; permanent ones must end in an
``OriginError`` naming the object within a bounded, configured time; damaged bodies must
never reach a tier; and every failed attempt is counted.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import S3, put_objects
from tests.reliability.conftest import faulty_cache, put_plain, tier_files
from tests.reliability.faultproxy import Fault, FaultProxy
from tiercache.origin import OriginError

MiB = 1 << 20

#: (fault, how the attempt fails) for faults that a retry gets past.
TRANSIENT = {
    "500": Fault("status", status=500, code="InternalError", times=2),
    "503-slowdown": Fault("status", status=503, code="SlowDown", times=2),
    "503": Fault("status", status=503, code="ServiceUnavailable", times=2),
    "reset": Fault("reset", times=2),
    "stall-mid-body": Fault("stall", delay=30, fraction=0.3, times=2),
    "truncated": Fault("truncate", fraction=0.6, times=2),
    "altered": Fault("alter", times=2),
    "short-but-consistent": Fault("lie", fraction=0.5, times=2),
}


@pytest.mark.parametrize("name", sorted(TRANSIENT))
def test_transient_fault_is_retried_and_the_read_succeeds(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, proxy: FaultProxy, name: str
) -> None:
    body = os.urandom(300_000)
    put_objects(s3_server, bucket, {"t.bin": body})
    fault = replace(TRANSIENT[name], path="/t.bin")
    proxy.add(fault)
    # read_timeout 1 s: a stalled body is abandoned quickly and tried again.
    fs = faulty_cache(cache_dirs, proxy, retries=3, read_timeout=1.0)

    assert fs.cat_file(f"{bucket}/t.bin") == body
    assert [s.fault for s in proxy.requests("GET", "/t.bin")] == [fault.kind] * 2 + ["ok"]
    origin = fs.stats()["origin"]
    # aiohttp itself retries an idempotent request once when a kept-alive connection is
    # reset under it, so a reset may cost us one attempt rather than two.
    expected = {1, 2} if fault.kind == "reset" else {2}
    assert origin["errors"] in expected and origin["retries"] == origin["errors"]
    assert origin["requests"]["get"]["error"] == origin["errors"]
    assert origin["requests"]["get"]["ok"] == 1
    # Cached, and what was cached is the origin's bytes: the next read is a hit.
    assert fs.cat_file(f"{bucket}/t.bin") == body
    assert len(proxy.requests("GET", "/t.bin")) == 3
    assert fs.cache.engine.verify()["ok"]


def test_slow_answer_is_waited_for_not_retried(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, proxy: FaultProxy
) -> None:
    body = os.urandom(200_000)
    put_objects(s3_server, bucket, {"slow.bin": body})
    proxy.add(Fault("slow", delay=1.0, path="/slow.bin"))
    fs = faulty_cache(cache_dirs, proxy, read_timeout=5.0)
    assert fs.cat_file(f"{bucket}/slow.bin") == body
    assert [s.fault for s in proxy.requests("GET", "/slow.bin")] == ["slow"]
    assert fs.stats()["origin"]["errors"] == 0


#: Damage that must never be admitted; the last two only a checksum can see.
DAMAGE = {
    "truncated": Fault("truncate", fraction=0.6, times=None),
    "altered": Fault("alter", times=None),
    "short-but-consistent": Fault("lie", fraction=0.5, times=None),
}


@pytest.mark.parametrize("size", [20_000, 300_000], ids=["small", "large"])
@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_damaged_body_is_never_admitted(
    cache_dirs: dict[str, Path],
    s3_server: S3,
    bucket: str,
    proxy: FaultProxy,
    name: str,
    size: int,
) -> None:
    """botocore's own checksum validation is off and the object carries no
    ``x-amz-checksum-*``: only tiercache's length and ETag (MD5) checks stand between a
    damaged body and the tiers."""
    body = os.urandom(size)
    put_plain(s3_server, bucket, {"d.bin": body})
    proxy.add(replace(DAMAGE[name], path="/d.bin"))
    fs = faulty_cache(cache_dirs, proxy, retries=2, botocore_checks=False)
    url = f"s3://{bucket}/d.bin"

    with pytest.raises(OriginError, match=url):
        fs.cat_file(f"{bucket}/d.bin")
    assert fs.cache.index.get(url) is None
    assert not tier_files(cache_dirs)
    assert all(not store.small_ids() for store in fs.cache.stores)
    attempts = len(proxy.requests("GET", "/d.bin"))
    assert attempts == 3  # the first try and two retries, every one refused
    assert fs.stats()["origin"]["errors"] == attempts

    proxy.clear()  # the network heals: the same read now succeeds and is cached
    assert fs.cat_file(f"{bucket}/d.bin") == body
    assert fs.cache.index.get(url) is not None
    assert fs.cache.engine.verify()["ok"]


def test_altered_body_is_caught_by_the_etag_check(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, proxy: FaultProxy
) -> None:
    """With nothing else validating, the MD5 of the body against the ETag is what refuses
    it, and the error says so."""
    body = os.urandom(300_000)
    put_plain(s3_server, bucket, {"m.bin": body})
    proxy.add(Fault("alter", times=None, path="/m.bin"))
    fs = faulty_cache(cache_dirs, proxy, retries=0, botocore_checks=False)
    with pytest.raises(OriginError, match=r"MD5 [0-9a-f]{32}, the origin's ETag says"):
        fs.cat_file(f"{bucket}/m.bin")


def test_altered_body_is_caught_by_the_stored_crc32(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, proxy: FaultProxy
) -> None:
    """An object stored with a CRC32 (what current SDKs upload) is checked against it (the
    GET asks for the stored checksum, so this holds with botocore's validation turned off
    in its config too), and the error names the checksum."""
    body = os.urandom(300_000)
    put_objects(s3_server, bucket, {"c.bin": body})  # s3fs uploads with x-amz-checksum-crc32
    proxy.add(Fault("alter", times=1, path="/c.bin"))
    fs = faulty_cache(cache_dirs, proxy, retries=0, botocore_checks=False)
    with pytest.raises(OriginError, match=r"(?i)checksum"):
        fs.cat_file(f"{bucket}/c.bin")
    assert fs.cache.index.get(f"s3://{bucket}/c.bin") is None
    assert fs.cat_file(f"{bucket}/c.bin") == body  # the fault is spent: the next read is good


PERMANENT = {
    "500": Fault("status", status=500, code="InternalError", times=None),
    "503-slowdown": Fault("status", status=503, code="SlowDown", times=None),
    "reset": Fault("reset", times=None),
    "hang": Fault("hang", times=None),
    "stall-mid-body": Fault("stall", times=None, delay=3600),
}


@pytest.mark.parametrize("name", sorted(PERMANENT))
def test_permanent_fault_fails_naming_the_object_within_the_timeout(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, proxy: FaultProxy, name: str
) -> None:
    """``timeout_seconds = 2`` with retries to spare: the deadline, not the retry count,
    ends it. botocore's read timeout (60 s) is far longer, so a hanging server is cut off
    by tiercache's own deadline."""
    put_objects(s3_server, bucket, {"p.bin": os.urandom(100_000)})
    proxy.add(replace(PERMANENT[name], path="/p.bin"))
    timeout = 2.0
    fs = faulty_cache(cache_dirs, proxy, retries=1000, timeout=timeout, read_timeout=60.0)
    started = time.monotonic()
    with pytest.raises(OriginError) as info:
        fs.cat_file(f"{bucket}/p.bin")
    elapsed = time.monotonic() - started
    assert elapsed < 3 * timeout, f"gave up after {elapsed:.1f} s, configured {timeout} s"
    assert f"s3://{bucket}/p.bin" in str(info.value)
    assert "attempt(s)" in str(info.value)
    attempts = len(proxy.requests("GET", "/p.bin"))
    errors = fs.stats()["origin"]["errors"]
    if name == "reset":  # aiohttp retries a reset idempotent request once on its own
        assert 1 <= errors <= attempts
    else:
        assert errors == attempts >= 1
    assert fs.cache.index.get(f"s3://{bucket}/p.bin") is None


def test_retry_count_bounds_attempts(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, proxy: FaultProxy
) -> None:
    put_objects(s3_server, bucket, {"r.bin": b"x" * 1000})
    proxy.add(Fault("status", status=500, code="InternalError", times=None, path="/r.bin"))
    fs = faulty_cache(cache_dirs, proxy, retries=2, timeout=60.0)
    with pytest.raises(OriginError, match="failed after 3 attempt"):
        fs.cat_file(f"{bucket}/r.bin")
    assert len(proxy.requests("GET", "/r.bin")) == 3
    stats = fs.stats()["origin"]
    assert stats["errors"] == 3 and stats["retries"] == 2


def test_errors_are_counted_in_the_prometheus_exporter(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, proxy: FaultProxy
) -> None:
    import urllib.request

    from tiercache.metrics import serve

    put_objects(s3_server, bucket, {"e.bin": os.urandom(10_000)})
    proxy.add(Fault("status", status=503, code="SlowDown", times=2, path="/e.bin"))
    fs = faulty_cache(cache_dirs, proxy, retries=3)
    fs.cat_file(f"{bucket}/e.bin")
    with serve(fs.config, port=0) as server:
        url = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
    assert "tiercache_origin_errors_total 2.0" in text
    assert "tiercache_origin_retries_total 2.0" in text


def test_listing_faults_are_retried(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, proxy: FaultProxy
) -> None:
    put_objects(s3_server, bucket, {f"dir/{i}": b"x" for i in range(3)})
    proxy.add(Fault("status", status=503, code="SlowDown", times=2, path=f"/{bucket}"))
    fs = faulty_cache(cache_dirs, proxy, retries=3)
    names = sorted(fs.ls(f"{bucket}/dir", detail=False))
    assert names == [f"{bucket}/dir/{i}" for i in range(3)]
    assert fs.stats()["origin"]["requests"]["list"]["error"] == 2


def test_origin_error_reaches_a_client_process_naming_the_object(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, proxy: FaultProxy
) -> None:
    """A miss served by the engine in another process: the client gets an OriginError
    with the object's URL, not a bare connection error."""
    put_objects(s3_server, bucket, {"a.bin": b"a" * 1000, "b.bin": b"b" * 1000})
    proxy.add(Fault("status", status=500, code="InternalError", times=None, path="/b.bin"))
    fs = faulty_cache(cache_dirs, proxy, retries=1, timeout=5.0)
    fs.cat_file(f"{bucket}/a.bin")  # this process becomes the engine
    assert fs.cache.is_engine
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: a plain client
        try:
            try:
                fs.cat_file(f"{bucket}/b.bin")
                msg = "no error"
            except OriginError as exc:
                msg = f"OriginError: {exc}"
            except BaseException as exc:
                msg = f"{type(exc).__name__}: {exc}"
            os.write(w, msg.encode())
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    msg = os.read(r, 10_000).decode()
    assert msg.startswith("OriginError:") and f"s3://{bucket}/b.bin" in msg, msg
