"""Replaying a trace through libCacheSim and through ours, for side-by-side miss ratios."""

from __future__ import annotations

from typing import Any

from tiercache.eviction import create_policy

from .traces import Trace

NEVER = 2**63 - 1

#: our registry name -> libCacheSim class name
LIBCACHESIM = {
    "lru": "LRU",
    "fifo": "FIFO",
    "clock": "Clock",
    "lfu": "LFU",
    "sieve": "Sieve",
    "s3fifo": "S3FIFO",
    "arc": "ARC",
    "2q": "TwoQ",
    "wtinylfu": "WTinyLFU",
    "belady": "Belady",
}


def next_access(keys: list[int]) -> list[int]:
    """For each request, the index of the same key's next request (libCacheSim's oracle)."""
    nxt = [NEVER] * len(keys)
    last: dict[int, int] = {}
    for i in range(len(keys) - 1, -1, -1):
        nxt[i] = last.get(keys[i], NEVER)
        last[keys[i]] = i
    return nxt


def miss_ratios_libcachesim(name: str, capacity: int, trace: Trace) -> tuple[float, float]:
    """(object miss ratio, byte miss ratio) of libCacheSim's implementation."""
    import libcachesim

    keys, sizes = trace
    cache = getattr(libcachesim, LIBCACHESIM[name])(capacity)
    req = libcachesim.Request()
    oracle = next_access(keys) if name == "belady" else None
    hits = hit_bytes = 0
    for i, (key, size) in enumerate(zip(keys, sizes, strict=True)):
        req.obj_id = key
        req.obj_size = size
        if oracle is not None:
            req.next_access_vtime = oracle[i]
        if cache.get(req):
            hits += 1
            hit_bytes += size
    return 1 - hits / len(keys), 1 - hit_bytes / sum(sizes)


def miss_ratios_ours(
    name: str, capacity: int, trace: Trace, check_every: int = 0, **params: Any
) -> tuple[float, float]:
    """(object miss ratio, byte miss ratio) of ours; checks invariants at the end (and every
    ``check_every`` requests if given)."""
    keys, sizes = trace
    policy = create_policy(name, capacity, **params)
    policy.hint(keys)
    hits = hit_bytes = 0
    for i, (key, size) in enumerate(zip(keys, sizes, strict=True)):
        if policy.request(key, size):
            hits += 1
            hit_bytes += size
        if check_every and i % check_every == 0:
            policy.check()
    policy.check()
    return 1 - hits / len(keys), 1 - hit_bytes / sum(sizes)
