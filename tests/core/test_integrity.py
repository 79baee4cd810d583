"""Never wrong bytes: corrupt blobs are repaired, changed objects refetched, and a dead
origin still serves what is cached."""

from __future__ import annotations

import hashlib
import os
import time
import zlib
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


@pytest.mark.parametrize("tier", ["ram", "ssd"])
def test_a_fetch_hashes_its_bytes_once_and_stores_that_checksum(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, tier: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """S3 vouches for the body with its CRC32; the engine checks the body against it and
    stores the blob with that same checksum, rather than hashing the bytes again."""
    body = os.urandom(MiB)
    put_objects(s3_server, bucket, {"once.bin": body})  # boto3 uploads with a CRC32
    fs = fs_for(cache_dirs, s3_server, admission={"tier": tier})
    real_crc32 = zlib.crc32
    passes = []

    def counting_crc32(data: Any, value: int = 0) -> int:
        if len(data) == len(body):
            passes.append(1)
        return real_crc32(data, value)

    monkeypatch.setattr(zlib, "crc32", counting_crc32)
    assert fs.cat_file(f"{bucket}/once.bin") == body
    assert len(passes) == 1
    monkeypatch.undo()
    entry = fs.cache.index.get(f"s3://{bucket}/once.bin")
    assert entry is not None and entry.tier == (0 if tier == "ram" else 1)
    assert entry.blob.checksum == zlib.crc32(body)
    fs.cache.stores[entry.tier]._maps.clear()  # read the blob afresh: verified, and intact
    assert fs.cache.stores[entry.tier].get(entry.blob_id, entry.blob) == body


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


def test_ttl_validation_is_one_head_per_object_for_the_whole_node(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str
) -> None:
    """Past the TTL an entry is validated once for the node (by the engine, one HEAD), not
    once per process, and never by listing its whole prefix."""
    import multiprocessing as mp

    objs = {f"d/{i}": os.urandom(100) for i in range(20)}
    put_objects(s3_server, bucket, objs)
    ttl = 2.0
    config = make_config(cache_dirs, validation={"mode": "ttl", "ttl_seconds": ttl})
    warm = TierCacheFileSystem(
        config=config, target_protocol="s3", target_options=s3_server.options
    )
    warm.cat(f"{bucket}/d/*")
    paths = [f"{bucket}/{k}" for k in objs]

    def read_all_in_a_new_process() -> list[dict[str, Any]]:
        s3_server.start_counting()
        with mp.get_context("fork").Pool(1) as pool:
            digests = pool.map(_sha_of_read, [(config, s3_server.options, p) for p in paths])
        assert digests == [hashlib.sha256(objs[p.split("/", 1)[1]]).hexdigest() for p in paths]
        return s3_server.requests()

    # Within the TTL of their fetch, entries need no check from any process.
    assert read_all_in_a_new_process() == []
    # Past it, one HEAD per object, asked by the engine; no listing.
    time.sleep(ttl + 0.1)
    reqs = read_all_in_a_new_process()
    assert sorted(r["method"] for r in reqs) == ["HEAD"] * len(objs)
    # ...and the next process trusts that validation for the TTL.
    assert read_all_in_a_new_process() == []


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


def test_index_of_an_older_layout_starts_afresh(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An index an earlier tiercache wrote (no format marker) is dropped, not misread."""
    from tiercache.cache import close_all

    objs = {f"old/{i}": os.urandom(MiB) for i in range(3)}
    put_objects(s3_server, bucket, objs)
    fs = fs_for(cache_dirs, s3_server)
    fs.cat(f"{bucket}/old/*")
    old = fs.cache
    with old.index.env.begin(write=True) as txn:
        assert txn.delete(b"format", db=old.index.meta)
    close_all()
    for handle in (old.index, *old.stores):  # as if in a new process: reopen from the files
        handle.close()
    TierCacheFileSystem.clear_instance_cache()

    fs = fs_for(cache_dirs, s3_server)
    s3_server.start_counting()
    for key, body in objs.items():
        assert fs.cat_file(f"{bucket}/{key}") == body
    assert "starting with an empty index (3 entries dropped" in caplog.text
    assert len(s3_server.requests("GET")) == 3  # refetched: nothing read from the old index
    assert fs.stats()["tiers"]["ram"]["entries"] == 3
    # The old blobs were swept as orphans: the files on disk are the new entries only.
    blobs = [p for p in (cache_dirs["ram"] / "blobs").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in blobs) == fs.stats()["tiers"]["ram"]["used_bytes"]


def test_a_disk_blob_verified_by_one_process_is_not_hashed_again_by_the_others(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str
) -> None:
    """N DataLoader workers reading one SSD-tier shard hash it once per node, not N times;
    a file that changed is hashed again whoever verified it before."""
    import multiprocessing as mp

    put_objects(s3_server, bucket, {"v/shard": os.urandom(2 << 20)})
    config = make_config(cache_dirs, ram="1MiB")  # too small: the shard lands on the SSD tier
    fs = TierCacheFileSystem(config=config, target_protocol="s3", target_options=s3_server.options)
    path = f"{bucket}/v/shard"
    body = fs.cat_file(path)  # the miss: stored on the SSD tier, hashed as it was fetched
    assert fs.cache.index.get(fs.origin.key(path)).tier == 1
    assert fs.cat_file(path) == body  # first hit on the node: hashed, and recorded
    assert fs.stats()["read_verifications"] == 1
    with mp.get_context("fork").Pool(3) as pool:  # three "workers", one open each
        digests = pool.map(_sha_of_read, [(config, s3_server.options, path)] * 3)
    assert digests == [hashlib.sha256(body).hexdigest()] * 3
    assert fs.stats()["read_verifications"] == 1

    # Damage the file: its identity changes, so a process that has not mapped it yet hashes
    # it whatever the record says, finds the damage and refetches.
    entry = fs.cache.index.get(fs.origin.key(path))
    with open(fs.cache.stores[1].blob_path(entry.blob_id), "r+b") as f:
        f.seek(1000)
        f.write(bytes([body[1000] ^ 0xFF]))
    with mp.get_context("fork").Pool(1) as pool:
        assert pool.map(_sha_of_read, [(config, s3_server.options, path)]) == digests[:1]
    assert fs.stats()["checksum_failures"] == 1


def _sha_of_read(args: tuple[dict[str, Any], dict[str, Any], str]) -> str:
    config, options, path = args
    fs = TierCacheFileSystem(config=config, target_protocol="s3", target_options=options)
    return hashlib.sha256(fs.cat_file(path)).hexdigest()
