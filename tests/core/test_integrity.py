"""Never wrong bytes: corrupt blobs are repaired, changed objects refetched, and a dead
origin still serves what is cached."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import S3, make_config, put_objects
from tiercache import TierCacheFileSystem
from tiercache.index import blob_id_for

MiB = 1 << 20


def fs_for(dirs: dict[str, Path], s3: S3, **kw: Any) -> Any:
    return TierCacheFileSystem(
        config=make_config(dirs, **kw), target_protocol="s3", target_options=s3.options
    )


@pytest.mark.parametrize("tier", ["ram", "ssd"])
def test_corrupted_blob_is_a_miss_and_a_repair(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, tier: str
) -> None:
    body = os.urandom(MiB)
    put_objects(s3_server, bucket, {"c.bin": body})
    admission = {"admission": {"tier": tier}}
    fs = fs_for(cache_dirs, s3_server, **admission)
    fs.cat_file(f"{bucket}/c.bin")
    root = cache_dirs["ram"] if tier == "ram" else cache_dirs["ssd"] / "ssd"
    blob_id = blob_id_for(f"s3://{bucket}/c.bin")
    path = root / "blobs" / blob_id[:2] / blob_id
    with open(path, "r+b") as f:  # flip one byte in place (a RAM tier's mtime changes too)
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    s3_server.start_counting()
    assert fs.cat_file(f"{bucket}/c.bin") == body
    assert fs.stats()["checksum_failures"] == 1
    assert len(s3_server.requests("GET", "c.bin")) == 1  # repaired from the origin
    assert fs.cat_file(f"{bucket}/c.bin") == body
    assert len(s3_server.requests("GET", "c.bin")) == 1  # and served from the cache again
    fs.cache.engine.check()


def test_truncated_blob_is_repaired(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str
) -> None:
    body = os.urandom(MiB)
    put_objects(s3_server, bucket, {"t.bin": body})
    fs = fs_for(cache_dirs, s3_server)
    fs.cat_file(f"{bucket}/t.bin")
    blob_id = blob_id_for(f"s3://{bucket}/t.bin")
    os.truncate(cache_dirs["ram"] / "blobs" / blob_id[:2] / blob_id, 100)
    with fs.open(f"{bucket}/t.bin") as f:
        assert f.read() == body


def test_corrupt_small_object_is_repaired(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str
) -> None:
    put_objects(s3_server, bucket, {"s.txt": b"small but precious"})
    fs = fs_for(cache_dirs, s3_server)
    fs.cat_file(f"{bucket}/s.txt")
    store = fs.cache.stores[0]
    with store.small.begin(write=True) as txn:
        txn.put(blob_id_for(f"s3://{bucket}/s.txt").encode(), b"small but PRECIOUS")
    assert fs.cat_file(f"{bucket}/s.txt") == b"small but precious"
    assert fs.stats()["checksum_failures"] == 1


@pytest.mark.parametrize("validation", [{"mode": "always"}, {"mode": "ttl", "ttl_seconds": 0}])
def test_changed_origin_object_is_refetched(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, validation: dict
) -> None:
    put_objects(s3_server, bucket, {"v.bin": b"version one"})
    fs = fs_for(cache_dirs, s3_server, validation=validation)
    assert fs.cat_file(f"{bucket}/v.bin") == b"version one"
    assert fs.cat_file(f"{bucket}/v.bin") == b"version one"
    put_objects(s3_server, bucket, {"v.bin": b"version two!"})
    assert fs.cat_file(f"{bucket}/v.bin") == b"version two!"
    with fs.open(f"{bucket}/v.bin") as f:
        assert f.read() == b"version two!"
    assert fs.stats()["stale_refetches"] == 1


def test_ttl_validation_lists_once_per_prefix(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str
) -> None:
    objs = {f"d/{i}": os.urandom(100) for i in range(20)}
    put_objects(s3_server, bucket, objs)
    warm = fs_for(cache_dirs, s3_server, validation={"mode": "ttl", "ttl_seconds": 3600})
    warm.cat(f"{bucket}/d/*")
    # A fresh process-level view (new Origin, nothing validated yet) re-checks by listing.
    warm.cache._validated.clear()
    warm.origin.forget_listings()
    s3_server.start_counting()
    for key, body in objs.items():
        assert warm.cat_file(f"{bucket}/{key}") == body
    reqs = s3_server.requests()
    assert (
        len(
            [
                r
                for r in reqs
                if r["method"] == "GET"
                and "list-type" in r.get("url", "")
                or r["method"] == "GET"
                and "prefix=" in r.get("url", "")
            ]
        )
        == 1
    )
    assert not [r for r in reqs if r["method"] == "HEAD"]


def test_dead_origin_still_serves_what_is_cached(cache_dirs: dict[str, Path]) -> None:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="doomed")
    body = os.urandom(MiB)
    client.put_object(Bucket="doomed", Key="k.bin", Body=body)
    config = make_config(
        cache_dirs, validation={"mode": "always"}, origin={"retries": 1, "timeout_seconds": 2}
    )
    options = {
        "endpoint_url": endpoint,
        "key": "testing",
        "secret": "testing",
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
    }
    fs = TierCacheFileSystem(config=config, target_protocol="s3", target_options=options)
    assert fs.cat_file("doomed/k.bin") == body
    server.stop()
    assert fs.cat_file("doomed/k.bin") == body  # validation fails, the cached copy is served
    with fs.open("doomed/k.bin") as f:
        assert f.read(10) == body[:10]
    assert fs.info("doomed/k.bin")["size"] == MiB
    from tiercache.origin import OriginError

    with pytest.raises(OriginError, match="doomed/other.bin"):
        fs.cat_file("doomed/other.bin")  # not cached: a clear error naming the object
