"""Fixtures for reliability tests: moto behind a fault-injecting proxy, on loopback only.

The test filesystem turns off the retries that botocore and s3fs do on their own
(``total_max_attempts=1``, ``fs.retries = 1``) wherever a test counts attempts: otherwise a
transient fault never reaches tiercache's own retry loop and we could not tell which layer
recovered. Production keeps both layers; our deadline bounds them together.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import S3, make_config
from tests.reliability.faultproxy import FaultProxy

MiB = 1 << 20


@pytest.fixture
def proxy(s3_server: S3) -> Iterator[FaultProxy]:
    p = FaultProxy(s3_server.endpoint)
    yield p
    p.close()


def origin_fs(
    endpoint: str,
    *,
    read_timeout: float = 5.0,
    botocore_checks: bool = True,
    secret: str = "testing",
) -> Any:
    """An s3fs filesystem at ``endpoint`` that retries nothing itself.

    ``botocore_checks=False`` stops botocore validating ``x-amz-checksum-*`` response
    headers, so a damaged body can only be caught by tiercache's own checks.
    """
    import s3fs

    config: dict[str, Any] = {
        "retries": {"total_max_attempts": 1},
        "connect_timeout": 2,
        "read_timeout": read_timeout,
    }
    if not botocore_checks:
        config["response_checksum_validation"] = "when_required"
    fs = s3fs.S3FileSystem(
        endpoint_url=endpoint,
        key="testing",
        secret=secret,
        config_kwargs=config,
        skip_instance_cache=True,
    )
    fs.retries = 1  # s3fs's own loop around botocore: one try
    return fs


def faulty_cache(
    dirs: dict[str, Path],
    proxy: FaultProxy,
    *,
    retries: int = 3,
    timeout: float = 20.0,
    read_timeout: float = 5.0,
    botocore_checks: bool = True,
    **sections: Any,
) -> Any:
    """A TierCacheFileSystem whose origin is moto behind ``proxy``."""
    from tiercache import TierCacheFileSystem

    origin = {"retries": retries, "timeout_seconds": timeout, **sections.pop("origin", {})}
    config = make_config(dirs, origin=origin, **sections)
    fs = origin_fs(proxy.endpoint, read_timeout=read_timeout, botocore_checks=botocore_checks)
    tcfs = TierCacheFileSystem(config=config, fs=fs)
    tcfs.config_dict = config  # for tests that start other processes on the same cache
    return tcfs


def put_plain(s3: S3, bucket: str, objects: dict[str, bytes]) -> None:
    """Upload without ``x-amz-checksum-*`` (as older clients did): only the ETag vouches."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint,
        config=Config(request_checksum_calculation="when_required"),
    )
    for key, body in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)


def tier_files(dirs: dict[str, Path]) -> list[Path]:
    """Every blob file in both test tiers (large objects; small ones live in small.lmdb)."""
    roots = [dirs["ram"] / "blobs", dirs["ssd"] / "ssd" / "blobs"]
    return [p for r in roots if r.exists() for p in r.rglob("*") if p.is_file()]
