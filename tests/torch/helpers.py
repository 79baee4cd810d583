"""Data builders and functions the torch tests run in worker processes (importable by spawn)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

SEQ = 256  # tokens per sample
SHARD_TOKENS = 32 * 1024  # 64 KiB shards of uint16: 128 samples each


def tokens(shards: int, seed: int = 0) -> np.ndarray:
    """Token ids where every value says where it is, so content checks are exact."""
    n = shards * SHARD_TOKENS
    return (np.arange(n, dtype=np.int64) * 7 + seed) % 65521


def expected_sample(all_tokens: np.ndarray, index: int) -> np.ndarray:
    """The tokens of sample ``index`` when shards hold a whole number of sequences."""
    per_shard = SHARD_TOKENS // SEQ
    shard, j = divmod(index, per_shard)
    start = shard * SHARD_TOKENS + j * SEQ
    return all_tokens[start : start + SEQ]


def decode_json(data: bytes) -> Any:
    """A module-level decoder: spawn workers must be able to unpickle it."""
    return json.loads(data)
