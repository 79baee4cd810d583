"""Synthetic traces for the eviction tests: the access patterns the issue names, seeded."""

from __future__ import annotations

import numpy as np

Trace = tuple[list[int], list[int]]  # keys, sizes (bytes), one entry per request


def epochs(n_keys: int = 2000, n_epochs: int = 5, seed: int = 1, size: int = 1) -> Trace:
    """Training: every key once per epoch, in a fresh random order each epoch."""
    rng = np.random.default_rng(seed)
    keys = np.concatenate([rng.permutation(n_keys) for _ in range(n_epochs)]).tolist()
    return keys, [size] * len(keys)


def zipf(
    alpha: float, n_keys: int = 5000, n_requests: int = 50_000, seed: int = 2, size: int = 1
) -> Trace:
    """Skewed popularity: key of rank r requested with probability proportional to r**-alpha."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_keys + 1) ** alpha
    keys = rng.choice(n_keys, size=n_requests, p=weights / weights.sum())
    # Shuffle ids so that popularity is not ordered by key (hash-based code must not care).
    ids = rng.permutation(n_keys)
    return ids[keys].tolist(), [size] * n_requests


def scan_loop(n_requests: int = 50_000, seed: int = 3) -> Trace:
    """A hot Zipf set, a loop larger than most caches, and one-time scans, interleaved."""
    rng = np.random.default_rng(seed)
    hot = 500
    weights = 1.0 / np.arange(1, hot + 1) ** 0.9
    weights /= weights.sum()
    keys: list[int] = []
    loop_pos = 0
    scan_next = 1_000_000
    while len(keys) < n_requests:
        phase = rng.integers(3)
        if phase == 0:  # burst from the hot set
            keys.extend(rng.choice(hot, size=int(rng.integers(200, 1500)), p=weights).tolist())
        elif phase == 1:  # a stretch of a 3000-key loop
            n = int(rng.integers(200, 2000))
            keys.extend(10_000 + (loop_pos + i) % 3000 for i in range(n))
            loop_pos = (loop_pos + n) % 3000
        else:  # a scan of keys never seen again
            n = int(rng.integers(200, 1000))
            keys.extend(range(scan_next, scan_next + n))
            scan_next += n
    keys = keys[:n_requests]
    return keys, [1] * len(keys)


def variable_sizes(alpha: float = 0.9, n_keys: int = 5000, n_requests: int = 50_000) -> Trace:
    """Zipf keys whose sizes differ (log-normal, 1 KiB to ~1 MiB), fixed per key."""
    keys, _ = zipf(alpha, n_keys, n_requests, seed=4)
    rng = np.random.default_rng(5)
    per_key = np.clip(rng.lognormal(mean=11.0, sigma=1.2, size=n_keys), 1024, 1 << 20)
    per_key = per_key.astype(np.int64).tolist()
    return keys, [per_key[k] for k in keys]


def working_set(trace: Trace) -> int:
    """Bytes of the distinct keys: what a capacity percentage is a percentage of."""
    seen: dict[int, int] = {}
    for key, size in zip(*trace, strict=True):
        seen[key] = size
    return sum(seen.values())
