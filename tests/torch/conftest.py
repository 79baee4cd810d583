"""Token shards in a moto bucket, shared by the torch tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import S3, make_config
from tests.torch import helpers

torch = pytest.importorskip("torch")


@dataclass
class TokenData:
    url: str
    options: dict[str, Any]
    tokens: np.ndarray
    shards: int


@pytest.fixture
def token_data(s3_server: S3, bucket: str) -> Iterator[TokenData]:
    """16 shards of 64 KiB (128 samples of 256 uint16 tokens each): 2,048 samples."""
    from tiercache.torch import write_tokens

    toks = helpers.tokens(16)
    url = f"s3://{bucket}/tokens"
    write_tokens(toks, url, shard_bytes=helpers.SHARD_TOKENS * 2,
                 storage_options=s3_server.options)  # fmt: skip
    yield TokenData(url, s3_server.options, toks, 16)


@pytest.fixture
def torch_config(cache_dirs: dict[str, Path]) -> dict[str, Any]:
    """Both tiers together hold the whole token dataset (1 MiB)."""
    return make_config(cache_dirs, ram="512KiB", ssd="4MiB",
                       validation={"mode": "ttl", "ttl_seconds": 600})  # fmt: skip
