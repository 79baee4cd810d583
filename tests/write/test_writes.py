"""Writing through tiercache: what a user sees before, while and after files reach S3.

The origin is moto over HTTP behind the fault proxy; holding the proxy's answers (``hang``)
keeps uploads pending for as long as a test needs to look at this node's view.
"""

from __future__ import annotations

import errno
import os
import zlib
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import S3
from tests.reliability.faultproxy import Fault, FaultProxy, wait_until
from tests.write.conftest import (
    PART,
    MiB,
    cache_over,
    keys,
    object_bytes,
    upload_parts,
    write_config,
)
from tiercache.index import blob_id_for


def test_a_closed_file_is_read_and_listed_here_before_the_origin_has_it(
    wfs: Any, proxy: FaultProxy, s3_server: S3, bucket: str
) -> None:
    proxy.add(Fault("hang", times=None, method="PUT"), Fault("hang", times=None, method="POST"))
    big = os.urandom(3 * PART + 123)  # multipart: 4 parts
    small = b"x" * 1000
    with wfs.open(f"{bucket}/ckpt/model.bin", "wb") as f:
        f.write(big[: 2 * MiB])
        f.write(big[2 * MiB :])
        assert f.tell() == len(big)
        os.fsync(f.fileno())  # a real descriptor, as PyTorch DCP uses
    wfs.pipe_file(f"{bucket}/ckpt/notes.txt", small)

    assert keys(s3_server, bucket) == []  # nothing reached the origin yet
    assert wfs.cat_file(f"{bucket}/ckpt/model.bin") == big
    assert wfs.cat_file(f"{bucket}/ckpt/model.bin", 10, 20) == big[10:20]
    with wfs.open(f"{bucket}/ckpt/model.bin") as f:
        f.seek(PART)
        assert f.read(100) == big[PART : PART + 100]
    assert wfs.ls(f"{bucket}/ckpt", detail=False) == [
        f"{bucket}/ckpt/model.bin",
        f"{bucket}/ckpt/notes.txt",
    ]
    assert wfs.info(f"{bucket}/ckpt/model.bin")["size"] == len(big)
    assert wfs.isdir(f"{bucket}/ckpt") and wfs.exists(f"{bucket}/ckpt/notes.txt")
    assert f"{bucket}/ckpt" in wfs.ls(bucket, detail=False)
    assert {u["url"] for u in wfs.uploads()} == {
        f"s3://{bucket}/ckpt/model.bin",
        f"s3://{bucket}/ckpt/notes.txt",
    }

    proxy.clear()  # the origin answers again
    assert wfs.sync(timeout=60) == []
    assert object_bytes(s3_server, bucket, "ckpt/model.bin") == big
    assert object_bytes(s3_server, bucket, "ckpt/notes.txt") == small
    head = s3_server.client.head_object(Bucket=bucket, Key="ckpt/model.bin", ChecksumMode="ENABLED")
    # S3 keeps the whole object's CRC32: the checksum readers on other nodes verify.
    assert head["ChecksumType"] == "FULL_OBJECT"
    assert int.from_bytes(__import__("base64").b64decode(head["ChecksumCRC32"]), "big") == (
        zlib.crc32(big)
    )
    # Released into the slowest tier: read from the cache, not fetched again.
    assert wfs.uploads() == []
    entry = wfs.cache.index.get(f"s3://{bucket}/ckpt/model.bin")
    assert entry is not None and entry.tier == 1
    proxy.clear()
    assert wfs.cat_file(f"{bucket}/ckpt/model.bin") == big
    assert proxy.requests("GET", "ckpt/model.bin") == []
    assert wfs.ls(f"{bucket}/ckpt", detail=False) == [
        f"{bucket}/ckpt/model.bin",
        f"{bucket}/ckpt/notes.txt",
    ]
    stats = wfs.stats()
    assert stats["uploads"]["pending_files"] == 0
    assert stats["uploads"]["uploaded_bytes"] >= len(big) + len(small)


def test_parts_are_sent_concurrently_and_each_once(
    wfs: Any, proxy: FaultProxy, s3_server: S3, bucket: str
) -> None:
    data = os.urandom(6 * PART)
    proxy.add(Fault("slow", times=None, method="PUT", query="partNumber=", delay=0.3))
    wfs.pipe_file(f"{bucket}/big.bin", data)
    assert wfs.sync(timeout=60) == []
    assert object_bytes(s3_server, bucket, "big.bin") == data
    parts = [s for s in proxy.requests("PUT", "big.bin") if "partNumber=" in s.query]
    assert len(parts) == 6
    assert len(proxy.requests("POST", "big.bin")) == 2  # create, complete


def test_overwrite_then_delete_leaves_no_object(
    wfs: Any, proxy: FaultProxy, s3_server: S3, bucket: str
) -> None:
    s3_server.client.put_object(Bucket=bucket, Key="p", Body=b"old")
    wfs.pipe_file(f"{bucket}/p", os.urandom(2 * PART))
    wfs.pipe_file(f"{bucket}/p", b"newer")
    wfs.rm(f"{bucket}/p")
    assert not wfs.exists(f"{bucket}/p")
    with pytest.raises(FileNotFoundError):
        wfs.cat_file(f"{bucket}/p")
    assert wfs.sync(timeout=60) == []
    assert keys(s3_server, bucket) == []
    assert not wfs.exists(f"{bucket}/p")
    with pytest.raises(FileNotFoundError):
        wfs.cat_file(f"{bucket}/p")


def test_overwrite_replaces_a_cached_object(wfs: Any, s3_server: S3, bucket: str) -> None:
    s3_server.client.put_object(Bucket=bucket, Key="o", Body=b"old" * 30000)
    assert wfs.cat_file(f"{bucket}/o") == b"old" * 30000  # cached
    wfs.pipe_file(f"{bucket}/o", b"new" * 30000)
    assert wfs.cat_file(f"{bucket}/o") == b"new" * 30000
    assert wfs.sync(timeout=60) == []
    assert wfs.cat_file(f"{bucket}/o") == b"new" * 30000
    assert object_bytes(s3_server, bucket, "o") == b"new" * 30000


def test_a_large_object_written_over_or_deleted_here_is_never_read_from_its_old_blocks(
    cache_dirs: dict[str, Path], proxy: FaultProxy, s3_server: S3, bucket: str
) -> None:
    """A large object is cached as blocks under a record that is trusted for the validation
    TTL: a write or delete on this node must drop it, or reads would get the old bytes."""
    config = write_config(cache_dirs)
    config["origin"]["block_size"] = "256KiB"
    fs = cache_over(config, proxy.endpoint)
    old, new = os.urandom(MiB), os.urandom(MiB + 5)
    for name in ("over", "gone"):
        s3_server.client.put_object(Bucket=bucket, Key=name, Body=old)
        assert fs.cat_file(f"{bucket}/{name}") == old  # read as blocks
    fs.pipe_file(f"{bucket}/over", new)
    fs.rm(f"{bucket}/gone")
    assert fs.sync(timeout=60) == []
    engine = fs.cache._local_engine()
    engine._drop(blob_id_for(fs.origin.key(f"{bucket}/over")))  # the new copy evicted
    assert fs.cat_file(f"{bucket}/over") == new
    with pytest.raises(FileNotFoundError):
        fs.cat_file(f"{bucket}/gone")


def test_rename_of_a_staged_file_and_of_an_origin_object(
    wfs: Any, proxy: FaultProxy, s3_server: S3, bucket: str
) -> None:
    s3_server.client.put_object(Bucket=bucket, Key="d/remote", Body=b"remote bytes")
    proxy.add(Fault("hang", times=None, method="PUT"))
    wfs.pipe_file(f"{bucket}/d/local.tmp", b"local bytes")
    wfs.mv(f"{bucket}/d/local.tmp", f"{bucket}/d/local")
    wfs.rename(f"{bucket}/d/remote", f"{bucket}/d/moved")
    assert wfs.ls(f"{bucket}/d", detail=False) == [f"{bucket}/d/local", f"{bucket}/d/moved"]
    assert wfs.cat_file(f"{bucket}/d/local") == b"local bytes"
    assert wfs.cat_file(f"{bucket}/d/moved") == b"remote bytes"
    with pytest.raises(FileNotFoundError):
        wfs.cat_file(f"{bucket}/d/remote")
    proxy.clear()
    assert wfs.sync(timeout=60) == []
    assert keys(s3_server, bucket) == ["d/local", "d/moved"]
    assert object_bytes(s3_server, bucket, "d/moved") == b"remote bytes"
    assert object_bytes(s3_server, bucket, "d/local") == b"local bytes"


def test_transaction_commits_all_or_nothing(wfs: Any, s3_server: S3, bucket: str) -> None:
    with pytest.raises(RuntimeError), wfs.transaction:
        wfs.pipe_file(f"{bucket}/t/a", b"a")
        with wfs.open(f"{bucket}/t/b", "wb") as f:
            f.write(b"b")
        assert not wfs.exists(f"{bucket}/t/a")  # not acknowledged before the commit
        raise RuntimeError("abandon")
    assert not wfs.exists(f"{bucket}/t/a") and not wfs.exists(f"{bucket}/t/b")
    with wfs.transaction:
        wfs.pipe_file(f"{bucket}/t/a", b"a")
        wfs.pipe_file(f"{bucket}/t/b", b"b")
    assert wfs.cat_file(f"{bucket}/t/a") == b"a" and wfs.cat_file(f"{bucket}/t/b") == b"b"
    assert wfs.sync(timeout=60) == []
    assert keys(s3_server, bucket) == ["t/a", "t/b"]
    staged = list((Path(wfs.cache.config.write.path) / "open").iterdir())
    assert staged == []  # the abandoned transaction left nothing behind


def test_a_write_interrupted_by_an_exception_is_discarded(
    wfs: Any, s3_server: S3, bucket: str
) -> None:
    with pytest.raises(ValueError), wfs.open(f"{bucket}/half", "wb") as f:
        f.write(b"half of a checkpoint")
        raise ValueError("the save failed")
    assert not wfs.exists(f"{bucket}/half")
    assert wfs.sync(timeout=30) == []
    assert keys(s3_server, bucket) == []


def test_put_touch_makedirs_and_exclusive_create(
    wfs: Any, s3_server: S3, bucket: str, tmp_path: Path
) -> None:
    local = tmp_path / "local.bin"
    local.write_bytes(os.urandom(PART + 10))
    wfs.makedirs(f"{bucket}/up/dir", exist_ok=True)  # no directories in S3: nothing to do
    wfs.put(str(local), f"{bucket}/up/dir/local.bin")
    wfs.touch(f"{bucket}/up/empty")
    with pytest.raises(FileExistsError):
        wfs.open(f"{bucket}/up/empty", "xb")
    with wfs.open(f"{bucket}/up/new", "xb") as f:
        f.write(b"exclusive")
    with pytest.raises(ValueError, match="mode 'ab'"):
        wfs.open(f"{bucket}/up/new", "ab")
    with wfs.open(f"{bucket}/up/text", "w") as t:
        t.write("text mode works too\n")
    assert wfs.sync(timeout=60) == []
    assert object_bytes(s3_server, bucket, "up/dir/local.bin") == local.read_bytes()
    assert object_bytes(s3_server, bucket, "up/empty") == b""
    assert object_bytes(s3_server, bucket, "up/new") == b"exclusive"
    assert object_bytes(s3_server, bucket, "up/text") == b"text mode works too\n"


def test_write_through_returns_once_the_origin_has_it(
    cache_dirs: dict[str, Path], proxy: FaultProxy, s3_server: S3, bucket: str
) -> None:
    fs = cache_over(write_config(cache_dirs, mode="write-through"), proxy.endpoint)
    data = os.urandom(2 * PART + 1)
    with fs.open(f"{bucket}/wt.bin", "wb") as f:
        f.write(data)
        assert object_bytes(s3_server, bucket, "wt.bin") is None
    assert object_bytes(s3_server, bucket, "wt.bin") == data  # no sync needed
    assert fs.uploads() == []


def test_staging_quota_exceeded_is_a_clear_error_and_nothing_partial_reaches_s3(
    cache_dirs: dict[str, Path], proxy: FaultProxy, s3_server: S3, bucket: str
) -> None:
    config = write_config(cache_dirs, capacity=2 * PART, wait_seconds=1)
    fs = cache_over(config, proxy.endpoint)
    proxy.add(Fault("hang", times=None, method="PUT"), Fault("hang", times=None, method="POST"))
    fs.pipe_file(f"{bucket}/q/first", os.urandom(PART + MiB))  # staged, not uploading
    with pytest.raises(OSError) as raised, fs.open(f"{bucket}/q/second", "wb") as f:
        for _ in range(PART // MiB + 1):
            f.write(os.urandom(MiB))
    assert raised.value.errno == errno.ENOSPC
    assert "[write] capacity" in str(raised.value) and "10.0 MiB" in str(raised.value)
    assert not fs.exists(f"{bucket}/q/second")
    with pytest.raises(OSError, match="this file alone"):
        fs.pipe_file(f"{bucket}/q/huge", os.urandom(2 * PART + 1))
    proxy.clear()
    assert fs.sync(timeout=60) == []
    assert keys(s3_server, bucket) == ["q/first"]  # only what was acknowledged


def test_a_refused_upload_is_reported_and_kept(
    wfs: Any, proxy: FaultProxy, s3_server: S3, bucket: str
) -> None:
    proxy.add(Fault("status", times=None, method="PUT", status=403, code="AccessDenied"))
    data = os.urandom(1000)
    wfs.pipe_file(f"{bucket}/denied", data)
    left = wfs.sync(timeout=60)
    assert [u["state"] for u in left] == ["failed"]
    assert "AccessDenied" in left[0]["error"]
    stats = wfs.stats()["uploads"]
    assert stats["failed_files"] == 1 and stats["upload_failures"] >= 1
    assert wfs.cat_file(f"{bucket}/denied") == data  # the staged copy still serves reads
    proxy.clear()
    wfs.cache.engine_call("uploads_retry")
    assert wfs.sync(timeout=60) == []
    assert object_bytes(s3_server, bucket, "denied") == data


@pytest.mark.parametrize(
    "fault",
    [
        Fault("status", times=2, method="PUT", query="partNumber="),
        Fault("reset", times=2, method="PUT", query="partNumber="),
        Fault("cut", times=1, method="PUT", query="partNumber=", fraction=0.5),
        Fault("status", times=1, method="POST", query="uploadId="),
        Fault("truncate", times=1, method="POST", query="uploadId=", fraction=0.3),
        Fault("reset", times=1, method="PUT", path="small"),
        Fault("cut", times=1, method="PUT", path="small", fraction=0.5),
    ],
    ids=lambda f: f"{f.kind}-{f.method}-{f.query or f.path}",
)
def test_uploads_complete_exactly_through_faults(
    wfs: Any, proxy: FaultProxy, s3_server: S3, bucket: str, fault: Fault
) -> None:
    big, small = os.urandom(3 * PART + 5), os.urandom(5000)
    proxy.add(fault)
    wfs.pipe_file(f"{bucket}/f/big", big)
    wfs.pipe_file(f"{bucket}/f/small", small)
    assert wfs.sync(timeout=120) == []
    assert object_bytes(s3_server, bucket, "f/big") == big
    assert object_bytes(s3_server, bucket, "f/small") == small
    assert any(s.fault != "ok" for s in proxy.requests())  # the fault did happen


def test_metrics_show_uploads(wfs: Any, proxy: FaultProxy, bucket: str) -> None:
    from tiercache.metrics import families

    proxy.add(Fault("hang", times=None, method="PUT"))
    wfs.pipe_file(f"{bucket}/m", b"m" * 10_000)
    cache = wfs.cache

    def scrape() -> dict[str, Any]:
        counts, totals = cache.counters.snapshot(), cache.index.totals()
        summary = cache.staging.journal.summary()
        return {m.name: m for m in families(cache.config, counts, totals, uploads=summary)}

    names = scrape()
    pending = names["tiercache_upload_pending_bytes"].samples[0].value
    assert pending == 10_000
    assert names["tiercache_upload_pending_files"].samples[0].value == 1
    proxy.clear()
    assert wfs.sync(timeout=60) == []
    names = scrape()
    assert names["tiercache_upload_pending_bytes"].samples[0].value == 0
    assert names["tiercache_uploaded_bytes"].samples[0].value >= 10_000
    assert "tiercache_upload_failures" in names and "tiercache_upload_seconds" in names
    assert wait_until(lambda: True)


def test_uploads_command_lists_waits_and_retries(
    wfs: Any, proxy: FaultProxy, s3_server: S3, bucket: str, tmp_path: Path
) -> None:
    import json
    import subprocess
    import sys

    from tests.reliability.workers import toml
    from tests.write.conftest import ROOT

    cfg = tmp_path / "cache.toml"
    cfg.write_text(toml(wfs.config_dict))

    def uploads(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "tiercache", "uploads", "--config", str(cfg), *args]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)

    proxy.add(Fault("status", times=None, method="PUT", status=403, code="AccessDenied"))
    wfs.pipe_file(f"{bucket}/cli/denied", b"d" * 100)
    assert [u["state"] for u in wfs.sync(timeout=60)] == ["failed"]
    listed = uploads("--json")
    assert listed.returncode == 1, listed.stderr
    report = json.loads(listed.stdout)
    assert report["failed"] == 1 and report["pending"][0]["url"] == f"s3://{bucket}/cli/denied"
    table = uploads()
    assert "failed" in table.stdout and "AccessDenied" in table.stdout
    proxy.clear()
    done = uploads("--retry", "--wait", "--json", "--timeout", "60")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["pending"] == []
    assert object_bytes(s3_server, bucket, "cli/denied") == b"d" * 100


def test_parts_of_a_file_still_being_written_are_sent_before_close(
    wfs: Any, proxy: FaultProxy, s3_server: S3, bucket: str
) -> None:
    data = os.urandom(4 * PART + 77)
    f = wfs.open(f"{bucket}/early.bin", "wb")
    f.write(data[: 3 * PART + 10])
    # Parts 1-3 are whole: they travel while the file is still open.
    assert wait_until(lambda: upload_parts(proxy, "early.bin") >= 3, 60)
    assert keys(s3_server, bucket) == []  # nothing visible before close
    f.write(data[3 * PART + 10 :])
    f.close()
    assert wfs.sync(timeout=60) == []
    assert object_bytes(s3_server, bucket, "early.bin") == data
    assert upload_parts(proxy, "early.bin") == 5  # each part once


def test_a_file_rewritten_after_its_parts_were_sent_is_uploaded_as_it_ends(
    wfs: Any, proxy: FaultProxy, s3_server: S3, bucket: str
) -> None:
    first = os.urandom(3 * PART)
    with wfs.open(f"{bucket}/rewritten.bin", "wb") as f:
        f.write(first)
        assert wait_until(lambda: upload_parts(proxy, "rewritten.bin") >= 2, 60)
        f.seek(100)
        f.write(b"REWRITTEN")  # a part already sent no longer holds these bytes
    expected = first[:100] + b"REWRITTEN" + first[109:]
    assert wfs.sync(timeout=60) == []
    assert object_bytes(s3_server, bucket, "rewritten.bin") == expected
    uploads = s3_server.client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert uploads == []  # the first upload was aborted, not left behind


def _discard_mid_upload(wfs: Any, proxy: FaultProxy, bucket: str) -> None:
    """Write 3 parts to ``dropped.bin``, wait until 2 were sent early, then fail the save."""
    with pytest.raises(RuntimeError), wfs.open(f"{bucket}/dropped.bin", "wb") as f:
        f.write(os.urandom(3 * PART))
        assert wait_until(lambda: upload_parts(proxy, "dropped.bin") >= 2, 60)
        raise RuntimeError("the save failed")


def _no_upload_left(s3: S3, bucket: str) -> bool:
    return not s3.client.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_a_discarded_file_leaves_no_upload_behind(
    wfs: Any, proxy: FaultProxy, s3_server: S3, bucket: str
) -> None:
    _discard_mid_upload(wfs, proxy, bucket)
    assert wait_until(lambda: _no_upload_left(s3_server, bucket), 30)
    assert keys(s3_server, bucket) == []


def test_a_server_without_checksums_or_listparts_is_verified_by_etags(
    wfs: Any, proxy: FaultProxy, s3_server: S3, bucket: str
) -> None:
    """An S3-compatible server that ignores flexible checksums (keeps no CRC32) and has no
    ListParts: parts are checked against their MD5 ETags, the object against the ETag of
    a multipart object, and nothing is read back."""
    proxy.add(
        Fault("status", times=None, method="GET", query="uploadId=", status=405,
              code="MethodNotAllowed"),
        Fault("strip", times=None, method=None, headers="x-amz-checksum,x-amz-sdk-checksum"),
    )  # fmt: skip
    data = os.urandom(3 * PART + 1)
    wfs.pipe_file(f"{bucket}/plain/big", data)
    wfs.pipe_file(f"{bucket}/plain/small", b"s" * 999)
    assert wfs.sync(timeout=60) == []
    assert object_bytes(s3_server, bucket, "plain/big") == data
    head = s3_server.client.head_object(Bucket=bucket, Key="plain/big", ChecksumMode="ENABLED")
    assert "ChecksumCRC32" not in head and head["ETag"].endswith('-4"')
    assert proxy.requests("GET", "plain/") == []  # verified without reading back


def test_an_abort_the_origin_fails_is_tried_again(
    wfs: Any, proxy: FaultProxy, s3_server: S3, bucket: str
) -> None:
    """Forgetting an upload whose abort failed would leave its parts stored for good."""
    proxy.add(Fault("status", times=3, method="DELETE", query="uploadId=", status=500,
                    code="InternalError"))  # fmt: skip
    _discard_mid_upload(wfs, proxy, bucket)
    assert wait_until(lambda: _no_upload_left(s3_server, bucket), 30)
    assert len(proxy.requests("DELETE", "dropped.bin")) == 4  # 3 refused, then the abort
