"""Functions run in child processes by the block tests (importable under spawn)."""

from __future__ import annotations

import hashlib
import time
from typing import Any


def read_large(
    config: dict[str, Any], options: dict[str, Any], path: str, start_at: float
) -> dict[str, str]:
    """Wait until ``start_at`` so every process misses at once, then read ``path`` whole, by
    range and through a file handle; returns digests."""
    from tiercache import TierCacheFileSystem

    fs = TierCacheFileSystem(config=config, target_protocol="s3", target_options=options)
    time.sleep(max(0.0, start_at - time.time()))
    whole = fs.cat_file(path)
    part = fs.cat_file(path, 300_000, 900_000)
    with fs.open(path) as f:
        f.seek(1_000_000)
        handle = f.read(500_000)
    fs.cache.flush_access()
    return {
        "whole": hashlib.sha256(whole).hexdigest(),
        "part": hashlib.sha256(part).hexdigest(),
        "handle": hashlib.sha256(handle).hexdigest(),
        "engine": str(fs.cache.is_engine),
    }
