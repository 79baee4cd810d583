"""Large objects against npm's s3rver: a second S3 server, one that serves ranges from files
on disk (as the benchmarks use it), keeps no checksums and ignores ``If-Match``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.blocks.conftest import BLOCK, MiB, blocks_config
from tiercache.demo.server import S3Server, start_s3rver
from tiercache.origin import OriginChangedError


@pytest.fixture(scope="module")
def s3rver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_s3rver(tmp_path_factory.mktemp("s3rver"))
    yield server
    server.stop()


@pytest.fixture
def sbucket(s3rver: S3Server) -> str:
    import uuid

    name = f"large-{uuid.uuid4().hex[:10]}"
    s3rver.create_bucket(name)
    return name


def put(server: S3Server, bucket: str, objects: dict[str, bytes]) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(**server.options, skip_instance_cache=True)
    for key, body in objects.items():
        fs.pipe_file(f"{bucket}/{key}", body)


def fs_on(server: S3Server, dirs: dict[str, Path]) -> Any:
    from tiercache import TierCacheFileSystem

    return TierCacheFileSystem(
        config=blocks_config(dirs), target_protocol="s3", target_options=server.options
    )


def test_range_whole_and_file_reads(
    s3rver: S3Server, sbucket: str, cache_dirs: dict[str, Path]
) -> None:
    body = os.urandom(3 * MiB + 17)
    put(s3rver, sbucket, {"x.bin": body})
    fs = fs_on(s3rver, cache_dirs)
    url = f"{sbucket}/x.bin"
    assert fs.cat_file(url, MiB - 5, MiB + 5) == body[MiB - 5 : MiB + 5]
    assert fs.cat_file(url) == body
    with fs.open(url) as f:
        f.seek(2 * MiB)
        assert f.read() == body[2 * MiB :]
    assert fs.stats()["origin"]["bytes"] == len(body)
    record = fs.cache.blocks.records.get(f"s3://{url}")
    assert record.crc32 is None and record.crcs is None  # no checksum to check against


def test_a_change_is_caught_where_the_server_ignores_if_match(
    s3rver: S3Server, sbucket: str, cache_dirs: dict[str, Path]
) -> None:
    old, new = os.urandom(2 * MiB), os.urandom(2 * MiB)
    put(s3rver, sbucket, {"v.bin": old})
    fs = fs_on(s3rver, cache_dirs)
    url = f"{sbucket}/v.bin"
    assert fs.cat_file(url, 0, 10) == old[:10]
    f = fs.open(url)
    put(s3rver, sbucket, {"v.bin": new})
    assert fs.cat_file(url) == new  # the answers' ETags tell; the read starts again
    f.seek(3 * BLOCK)
    with pytest.raises(OriginChangedError):
        f.read(10)
    f.close()


def test_tiercache_warm_fetches_a_model_directory(
    s3rver: S3Server, sbucket: str, cache_dirs: dict[str, Path], tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    from tiercache import TierCacheFileSystem
    from tiercache.torch import load_safetensors

    shards = {
        f"model/model-0000{i}-of-00004.safetensors": st.save(
            {f"layer.{i}.weight": torch.randn(512, 300), f"layer.{i}.bias": torch.randn(300)}
        )
        for i in range(4)
    }
    put(s3rver, sbucket, {**shards, "model/config.json": b'{"layers": 4}'})
    total = sum(map(len, shards.values())) + len(b'{"layers": 4}')
    config = blocks_config(cache_dirs)
    toml = tmp_path / "cache.toml"
    lines = []
    for tier in config["tiers"]:
        lines += ["[[tiers]]", *(f"{k} = {json.dumps(v)}" for k, v in tier.items())]
    lines += ["[origin]", f"block_size = {BLOCK}"]
    toml.write_text("\n".join(lines) + "\n")
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": s3rver.endpoint,
        "AWS_ACCESS_KEY_ID": "S3RVER",
        "AWS_SECRET_ACCESS_KEY": "S3RVER",
    }
    argv = [sys.executable, "-m", "tiercache", "warm", f"s3://{sbucket}/model/", "--json"]
    proc = subprocess.run(
        [*argv, "--config", str(toml)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["objects"] == 5 and summary["bytes"] == total and not summary["errors"]

    fs = TierCacheFileSystem(config=str(toml), target_protocol="s3", target_options=s3rver.options)
    fetched = fs.stats()["origin"]["bytes"]
    assert fetched == total
    for key, blob in shards.items():
        loaded = load_safetensors(f"{sbucket}/{key}", fs=fs)
        assert loaded.keys() == st.load(blob).keys()
    assert fs.stats()["origin"]["bytes"] == fetched  # every block came from the tiers
