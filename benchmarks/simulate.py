"""Simulator throughput: requests per second of each eviction algorithm on a ~1M-request trace.

The engine runs the same policy objects for every access, so this is also the per-access
policy cost of the cache. Alongside, libCacheSim's own C loop (``process_trace`` over an
oracleGeneral binary trace) on the very same requests, and the ratio of the two times.

    python benchmarks/simulate.py [--requests 1000000] [--keys 100000] [--alpha 0.9]
                                  [--capacity 0.1] [--repeat 3]

Prints a table, then the same figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from typing import Any

import numpy as np

from tiercache.eviction import create_policy
from tiercache.simulate import Trace, run_policy

#: ours -> libCacheSim class; static has no counterpart there.
LIBCACHESIM = {
    "lru": "LRU", "fifo": "FIFO", "clock": "Clock", "lfu": "LFU", "sieve": "Sieve",
    "s3fifo": "S3FIFO", "arc": "ARC", "2q": "TwoQ", "wtinylfu": "WTinyLFU", "belady": "Belady",
    "static": None,
}  # fmt: skip
#: The floors the issue sets (requests/s, CPython).
FLOORS = {"lru": 500_000, "fifo": 500_000, "sieve": 500_000, "s3fifo": 500_000,
          "arc": 250_000, "wtinylfu": 250_000}  # fmt: skip
OBJECT_SIZE = 4096


def zipf_trace(n_requests: int, n_keys: int, alpha: float, seed: int) -> Trace:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_keys + 1) ** alpha
    ranks = rng.choice(n_keys, size=n_requests, p=weights / weights.sum())
    keys = rng.permutation(n_keys)[ranks].tolist()
    return Trace(keys, [OBJECT_SIZE] * n_requests, f"zipf{alpha}")


def write_oracle_general(trace: Trace, path: str) -> None:
    """libCacheSim's binary format: (u32 time, u64 id, u32 size, i64 next access index)."""
    n = len(trace)
    record = np.dtype([("t", "<u4"), ("id", "<u8"), ("size", "<u4"), ("next", "<i8")])
    rows = np.zeros(n, dtype=record)
    rows["t"] = np.arange(n)
    rows["id"] = trace.keys
    rows["size"] = trace.sizes
    nxt = np.full(n, -1, dtype=np.int64)
    last: dict[int, int] = {}
    for i in range(n - 1, -1, -1):
        nxt[i] = last.get(trace.keys[i], -1)
        last[trace.keys[i]] = i
    rows["next"] = nxt
    rows.tofile(path)


def time_ours(name: str, trace: Trace, capacity: int, repeat: int) -> dict[str, Any]:
    best = float("inf")
    hits = 0
    for _ in range(repeat):
        policy = create_policy(name, capacity)
        hits, _, seconds = run_policy(policy, trace)
        best = min(best, seconds)
    return {"seconds": best, "hit_ratio": hits / len(trace)}


def time_libcachesim(name: str, path: str, capacity: int, repeat: int) -> dict[str, Any] | None:
    cls_name = LIBCACHESIM[name]
    if cls_name is None:
        return None
    import libcachesim

    best = float("inf")
    miss = 0.0
    for _ in range(repeat):
        reader = libcachesim.TraceReader(path, libcachesim.TraceType.ORACLE_GENERAL_TRACE)
        cache = getattr(libcachesim, cls_name)(capacity)
        start = time.perf_counter()
        miss, _ = cache.process_trace(reader)
        best = min(best, time.perf_counter() - start)
    return {"seconds": best, "hit_ratio": 1 - miss}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--capacity", type=float, default=0.1, help="share of the working set")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--eviction", default=",".join(LIBCACHESIM))
    args = parser.parse_args()

    trace = zipf_trace(args.requests, args.keys, args.alpha, args.seed)
    capacity = int(trace.working_set * args.capacity)
    try:
        import libcachesim  # noqa: F401

        have_lcs = True
    except ImportError:
        have_lcs = False
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.oracleGeneral.bin")
        if have_lcs:
            write_oracle_general(trace, path)
        for name in args.eviction.split(","):
            ours = time_ours(name, trace, capacity, args.repeat)
            theirs = time_libcachesim(name, path, capacity, args.repeat) if have_lcs else None
            row: dict[str, Any] = {
                "eviction": name,
                "requests": len(trace),
                "requests_per_second": len(trace) / ours["seconds"],
                "seconds": ours["seconds"],
                "hit_ratio": ours["hit_ratio"],
                "floor_requests_per_second": FLOORS.get(name),
            }
            if theirs is not None:
                row["libcachesim_seconds"] = theirs["seconds"]
                row["libcachesim_requests_per_second"] = len(trace) / theirs["seconds"]
                row["libcachesim_hit_ratio"] = theirs["hit_ratio"]
                row["time_ratio_vs_libcachesim"] = ours["seconds"] / theirs["seconds"]
            results.append(row)
            print(f"  {name} done", file=sys.stderr)

    print(
        f"trace: Zipf {args.alpha}, {len(trace):,} requests over {args.keys:,} keys, capacity "
        f"{args.capacity:.0%} of the working set; best of {args.repeat}; "
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs"
    )
    header = f"{'eviction':9s} {'req/s':>11s} {'floor':>9s} {'hit ratio':>9s} "
    header += f"{'libCacheSim req/s':>18s} {'its hit r.':>10s} {'time ratio':>10s}"
    print(header)
    for r in results:
        floor = r["floor_requests_per_second"]
        line = f"{r['eviction']:9s} {r['requests_per_second']:11,.0f} "
        line += f"{floor:9,d} " if floor else f"{'-':>9s} "
        line += f"{r['hit_ratio']:9.4f} "
        if "libcachesim_seconds" in r:
            line += f"{r['libcachesim_requests_per_second']:18,.0f} "
            line += f"{r['libcachesim_hit_ratio']:10.4f} {r['time_ratio_vs_libcachesim']:9.1f}x"
        else:
            line += f"{'-':>18s} {'-':>10s} {'-':>10s}"
        print(line)
    print()
    print(json.dumps(results, indent=1))
    slow = [r["eviction"] for r in results if (r["floor_requests_per_second"] or 0) >
            r["requests_per_second"]]  # fmt: skip
    if slow:
        print(f"below the floor: {', '.join(slow)}", file=sys.stderr)
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
