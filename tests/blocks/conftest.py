"""Fixtures for large objects: small blocks, so a few MiB exercise what GiB objects do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import S3, make_config

KiB = 1 << 10
MiB = 1 << 20
#: Block size of these tests: a 2 MiB object is 8 blocks.
BLOCK = 256 * KiB


def blocks_config(dirs: dict[str, Path], **kw: Any) -> dict[str, Any]:
    origin = {"block_size": BLOCK, **kw.pop("origin", {})}
    return make_config(dirs, origin=origin, **kw)


def blocks_fs(dirs: dict[str, Path], s3: S3, **kw: Any) -> Any:
    from tiercache import TierCacheFileSystem

    return TierCacheFileSystem(
        config=blocks_config(dirs, **kw),
        target_protocol="s3",
        target_options=s3.options,
        skip_instance_cache=True,
    )


@pytest.fixture
def bfs(cache_dirs: dict[str, Path], s3_server: S3) -> Any:
    """A two-tier cache (RAM 8 MiB, SSD 32 MiB) over moto with 256 KiB blocks."""
    return blocks_fs(cache_dirs, s3_server)


def ranged_gets(s3: S3, key: str) -> list[str]:
    """The Range headers of the GETs of ``key`` moto received since ``start_counting``."""
    return [
        r["headers"].get("Range", "") for r in s3.requests("GET", key) if r["headers"].get("Range")
    ]
