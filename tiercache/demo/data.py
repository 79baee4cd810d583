"""A synthetic token dataset with something to learn.

Tokens follow a random walk over the vocabulary (each step -3..+3), so a next-token model
has a real signal (the loss falls from ln(V) towards the walk's entropy) while generation
costs one cumsum per shard.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

VOCAB = 1024


def token_chunks(total_bytes: int, shard_bytes: int, *, seed: int = 0,
                 vocab: int = VOCAB) -> Iterator[np.ndarray]:  # fmt: skip
    """uint16 token arrays of one shard each, ``total_bytes`` in all."""
    rng = np.random.default_rng(seed)
    per_shard = shard_bytes // 2
    remaining = total_bytes // 2
    start = 0
    while remaining > 0:
        n = min(per_shard, remaining)
        walk = rng.integers(-3, 4, size=n, dtype=np.int64)
        walk[0] += start
        tokens = np.cumsum(walk) % vocab
        start = int(tokens[-1])
        yield tokens.astype(np.uint16)
        remaining -= n


def write_synthetic(url: str, total_bytes: int, shard_bytes: int,
                    storage_options: dict[str, Any] | None = None, *, seed: int = 0,
                    progress: bool = False) -> list[str]:  # fmt: skip
    """Write the synthetic dataset as ``tokens-NNNNN.bin`` shards under ``url``."""
    from tqdm import tqdm

    from ..torch import write_tokens

    shards = -(-total_bytes // shard_bytes)
    bar = tqdm(total=shards, unit="shard", desc="writing dataset", disable=not progress,
               leave=False)  # fmt: skip

    def counted() -> Iterator[np.ndarray]:
        for chunk in token_chunks(total_bytes, shard_bytes, seed=seed):
            yield chunk
            bar.update(1)

    try:
        return write_tokens(counted(), url, shard_bytes=shard_bytes, dtype="uint16",
                            storage_options=storage_options)  # fmt: skip
    finally:
        bar.close()
