"""The origin goes away: what is cached keeps being served, listings come from the last
known state, and nothing waits on the dead origin more than once per validation TTL."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import S3, put_objects
from tests.reliability.conftest import faulty_cache
from tests.reliability.faultproxy import Fault, FaultProxy
from tiercache.origin import OriginError

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]


def _objects() -> dict[str, bytes]:
    # Small (small.lmdb) and large (blob files); RAM holds 2 MiB, so some land on the SSD.
    return {f"data/{i}.bin": os.urandom(20_000 if i % 2 else MiB) for i in range(6)}


@pytest.mark.parametrize("mode", ["ttl", "always", "never"])
@pytest.mark.parametrize("how", ["refused", "hanging"])
def test_unreachable_origin_still_serves_everything_cached(
    cache_dirs: dict[str, Path],
    s3_server: S3,
    bucket: str,
    proxy: FaultProxy,
    mode: str,
    how: str,
) -> None:
    objs = dict(list(_objects().items())[:4])
    put_objects(s3_server, bucket, objs)
    # Long enough that filling the cache through the proxy never times out on a loaded
    # machine; the outage below must still be noticed within a few of these.
    timeout = 2.0
    fs = faulty_cache(
        cache_dirs,
        proxy,
        retries=2,
        timeout=timeout,
        ram=2 * MiB,
        validation={"mode": mode, "ttl_seconds": 0},  # ttl 0: every hit revalidates
    )
    for key, body in objs.items():
        assert fs.cat_file(f"{bucket}/{key}") == body
    tiers = {fs.cache.index.get(f"s3://{bucket}/{k}").tier for k in objs}
    assert tiers == {0, 1}, "both tiers should be serving"

    if how == "refused":
        proxy.down()
    else:
        proxy.add(Fault("hang", method=None, times=None))
    for key, body in objs.items():
        assert fs.cat_file(f"{bucket}/{key}") == body
        with fs.open(f"{bucket}/{key}") as f:
            f.seek(len(body) // 3)
            assert f.read(1000) == body[len(body) // 3 : len(body) // 3 + 1000]
    assert fs.cat_file(f"{bucket}/data/1.bin", start=-100) == objs["data/1.bin"][-100:]

    put_objects(s3_server, bucket, {"data/new.bin": b"n" * 100})
    started = time.monotonic()
    with pytest.raises(OriginError, match=f"s3://{bucket}/data/new.bin"):
        fs.cat_file(f"{bucket}/data/new.bin")
    assert time.monotonic() - started < 3 * timeout
    # The cache itself is untouched by the outage.
    assert fs.cache.engine.verify()["ok"]
    proxy.clear()
    proxy.up()
    assert fs.cat_file(f"{bucket}/data/new.bin") == b"n" * 100


def test_a_dead_origin_is_asked_at_most_once_per_ttl(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, proxy: FaultProxy
) -> None:
    """Validation with a TTL: when the origin cannot be reached, the cached copies stand
    while it is down, so hits do not each wait out the retry budget."""
    objs = _objects()
    put_objects(s3_server, bucket, objs)
    fs = faulty_cache(
        cache_dirs, proxy, retries=2, timeout=5.0, validation={"mode": "ttl", "ttl_seconds": 2}
    )
    for key in objs:
        fs.cat_file(f"{bucket}/{key}")
    time.sleep(2.2)  # every key's validation has expired
    proxy.add(Fault("status", status=503, code="SlowDown", method=None, times=None))
    before = fs.stats()["origin"]["requests"]["head"]
    for _ in range(3):
        for key, body in objs.items():
            assert fs.cat_file(f"{bucket}/{key}") == body
    after = fs.stats()["origin"]["requests"]["head"]
    # One validation (first try + 2 retries), not one per hit or per object.
    assert after["error"] - before["error"] == 3
    assert [s.fault for s in proxy.requests("HEAD") if s.fault != "ok"] == ["status"] * 3


def test_listings_come_from_the_last_known_state_when_the_origin_is_gone(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, proxy: FaultProxy
) -> None:
    objs = _objects()
    put_objects(s3_server, bucket, objs)
    fs = faulty_cache(
        cache_dirs, proxy, retries=1, timeout=2.0, validation={"mode": "ttl", "ttl_seconds": 0}
    )
    online = sorted(fs.ls(f"{bucket}/data", detail=False))
    assert len(online) == len(objs)
    size_online = fs.info(f"{bucket}/data/0.bin")["size"]
    proxy.down()
    assert sorted(fs.ls(f"{bucket}/data", detail=False)) == online
    assert fs.info(f"{bucket}/data/0.bin")["size"] == size_online == MiB
    assert sorted(fs.find(f"{bucket}/data")) == online
    # A directory never listed cannot be invented: a clear error naming it.
    with pytest.raises(OriginError, match=f"{bucket}/elsewhere"):
        fs.ls(f"{bucket}/elsewhere")


def test_offline_mode_in_a_new_process_lists_and_reads_from_the_last_known_state(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, proxy: FaultProxy
) -> None:
    """A training job restarted while the origin is down, with ``[origin] offline = true``:
    it lists the dataset from the listing an earlier process saw and reads every cached
    object, and the origin is never asked."""
    objs = _objects()
    put_objects(s3_server, bucket, objs)
    fs = faulty_cache(cache_dirs, proxy, validation={"mode": "always"})
    listing = sorted(fs.ls(f"{bucket}/data", detail=False))
    for key in objs:
        fs.cat_file(f"{bucket}/{key}")
    from tiercache.cache import close_all

    close_all()  # this process lets go of the engine, as a finished job would
    proxy.down()
    config = {**fs.config_dict, "origin": {"offline": True, "retries": 0, "timeout_seconds": 2}}
    script = textwrap.dedent(
        f"""
        import hashlib, json, sys
        from tests.reliability.conftest import origin_fs
        from tiercache import TierCacheFileSystem
        config = json.loads(sys.argv[1])
        fs = TierCacheFileSystem(config=config, fs=origin_fs({proxy.endpoint!r}))
        names = sorted(fs.ls({bucket + "/data"!r}, detail=False))
        digests = {{n: hashlib.sha256(fs.cat_file(n)).hexdigest() for n in names}}
        print(json.dumps({{"names": names, "digests": digests, "stats": fs.stats()["origin"]}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, json.dumps(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["names"] == listing
    assert result["digests"] == {
        f"{bucket}/{k}": hashlib.sha256(v).hexdigest() for k, v in objs.items()
    }
    assert result["stats"]["errors"] == 0
