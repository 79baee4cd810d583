"""S3 GETs by presigned URL (tiercache.s3direct): used for plain reads, the same bytes and
checks as through s3fs, and s3fs again for anything they cannot serve."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from tests.conftest import S3, make_config, put_objects
from tests.reliability.conftest import faulty_cache
from tests.reliability.faultproxy import Fault, FaultProxy

MiB = 1 << 20


def signed_gets(proxy: FaultProxy, name: str) -> list[str]:
    """GETs of ``name`` that came by presigned URL, as opposed to botocore's own requests."""
    return [s.path for s in proxy.requests("GET", name) if "X-Amz-Signature=" in s.query]


def test_plain_reads_use_presigned_gets(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, proxy: FaultProxy
) -> None:
    body = os.urandom(3 * MiB + 5)
    put_objects(s3_server, bucket, {"p.bin": body})
    fs = faulty_cache(cache_dirs, proxy)
    assert fs.cat_file(f"{bucket}/p.bin") == body
    assert isinstance(fs.cat_file(f"{bucket}/p.bin", 10, 20), bytes)
    assert len(signed_gets(proxy, "/p.bin")) == 1
    assert len(proxy.requests("GET", "/p.bin")) == 1  # no second request, no HEAD either
    assert not proxy.requests("HEAD", "/p.bin")


def test_direct_get_off_reads_through_s3fs(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, proxy: FaultProxy
) -> None:
    body = os.urandom(MiB)
    put_objects(s3_server, bucket, {"o.bin": body})
    fs = faulty_cache(cache_dirs, proxy, origin={"direct_get": False})
    assert fs.cat_file(f"{bucket}/o.bin") == body
    assert len(proxy.requests("GET", "/o.bin")) == 1
    assert signed_gets(proxy, "/o.bin") == []


def test_an_answer_it_cannot_use_falls_back_to_s3fs_and_turns_it_off(
    cache_dirs: dict[str, Path],
    s3_server: S3,
    bucket: str,
    proxy: FaultProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 403 (what a signature the presigner got wrong would look like) sends the read to
    s3fs; when s3fs succeeds, later reads of this origin go through s3fs only."""
    objs = {"a.bin": os.urandom(MiB), "b.bin": os.urandom(MiB)}
    put_objects(s3_server, bucket, objs)
    proxy.add(Fault("status", status=403, code="AccessDenied", times=1, path="/a.bin"))
    fs = faulty_cache(cache_dirs, proxy)
    with caplog.at_level(logging.WARNING, logger="tiercache.origin"):
        assert fs.cat_file(f"{bucket}/a.bin") == objs["a.bin"]
    assert "direct GETs off for this origin" in caplog.text
    assert [s.fault for s in proxy.requests("GET", "/a.bin")] == ["status", "ok"]
    assert fs.cat_file(f"{bucket}/b.bin") == objs["b.bin"]
    assert signed_gets(proxy, "/b.bin") == []


def test_missing_object_is_a_file_not_found_naming_it(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, proxy: FaultProxy
) -> None:
    fs = faulty_cache(cache_dirs, proxy)
    with pytest.raises(FileNotFoundError, match=f"s3://{bucket}/nope.bin"):
        fs.cat_file(f"{bucket}/nope.bin")
    assert len(signed_gets(proxy, "/nope.bin")) == 1  # answered by the direct GET itself


def test_server_errors_are_retried_on_the_direct_path(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, proxy: FaultProxy
) -> None:
    body = os.urandom(MiB)
    put_objects(s3_server, bucket, {"r.bin": body})
    proxy.add(Fault("status", status=503, code="SlowDown", times=2, path="/r.bin"))
    fs = faulty_cache(cache_dirs, proxy, retries=3)
    assert fs.cat_file(f"{bucket}/r.bin") == body
    assert len(signed_gets(proxy, "/r.bin")) == 3  # two refusals, then the read
    assert fs.stats()["origin"]["errors"] == 2


def test_a_kept_alive_connection_found_closed_is_not_an_origin_error(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, proxy: FaultProxy
) -> None:
    """Servers close idle keep-alive connections; the request is sent again at once on a
    fresh one instead of counting as a failure and waiting out a retry's backoff."""
    objs = {"k1.bin": os.urandom(MiB), "k2.bin": os.urandom(MiB)}
    put_objects(s3_server, bucket, objs)
    fs = faulty_cache(cache_dirs, proxy, retries=0)
    assert fs.cat_file(f"{bucket}/k1.bin") == objs["k1.bin"]  # opens this thread's connection
    proxy.add(Fault("reset", times=1, path="/k2.bin"))
    assert fs.cat_file(f"{bucket}/k2.bin") == objs["k2.bin"]
    assert [s.fault for s in proxy.requests("GET", "/k2.bin")] == ["reset", "ok"]
    assert fs.stats()["origin"]["errors"] == 0


def test_presigned_gets_over_https(cache_dirs: dict[str, Path]) -> None:
    """Real object stores speak TLS: the direct path keeps s3fs's ``verify`` setting (here
    off, for moto's self-signed certificate) and reads the same bytes."""
    from tiercache import TierCacheFileSystem
    from tiercache.demo.server import start_s3_server
    from tiercache.s3direct import DirectGetter

    body = os.urandom(2 * MiB)
    with start_s3_server(https=True) as server:
        import s3fs

        server.create_bucket("tls")
        s3fs.S3FileSystem(**server.options, skip_instance_cache=True).pipe("tls/t.bin", body)
        fs = TierCacheFileSystem(
            config=make_config(cache_dirs), target_protocol="s3", target_options=server.options
        )
        assert fs.cat_file("tls/t.bin") == body
        assert isinstance(fs.origin.direct, DirectGetter)  # not turned off
