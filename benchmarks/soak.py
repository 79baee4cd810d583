"""Soak: 8 reader processes for minutes over a working set 3x the cache; nothing may grow.

    python benchmarks/soak.py --minutes 10 [--readers 8] [--cache-mib 128] [--json]

The origin is moto in its own process over loopback HTTP. Objects range from 4 KiB to
64 MiB (many small, a few huge); readers pick them with a skewed (Zipf 0.9) popularity,
reading whole objects or 1 MiB ranges, as separate processes sharing one node cache (a
RAM tier of 1/4 and an SSD tier of 3/4 of ``--cache-mib``, both LRU). Reported:

* throughput over time (every ``--interval`` seconds, all readers together);
* read latency p50/p99/p999 per tier that served the read (ram, ssd, or origin);
* each process's RSS and open file descriptors over time, and their growth after warm-up;
* origin bytes read against what the same eviction algorithm, simulated by
  ``tiercache.simulate`` on the access log this run recorded, says a cache of this size
  must read (byte misses of one LRU of the combined size: the tiers' demotion chain
  behaves like one).
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import moto_server, report, s3_options, upload  # noqa: E402

MiB = 1 << 20
KiB = 1 << 10
BUCKET = "soak"
#: Object sizes and how many of each per 384 MiB of working set (3 x a 128 MiB cache).
SIZES = {
    64 * MiB: 2,
    16 * MiB: 4,
    4 * MiB: 16,
    MiB: 64,
    256 * KiB: 128,
    64 * KiB: 256,
    16 * KiB: 512,
    4 * KiB: 512,
}


def dataset(cache_bytes: int, seed: int = 0) -> dict[str, int]:
    """Key -> size, about 3x ``cache_bytes`` in all, every size class represented."""
    scale = 3 * cache_bytes / sum(s * n for s, n in SIZES.items())
    rng = random.Random(seed)
    keys = {}
    for size, count in SIZES.items():
        for i in range(max(1, round(count * scale))):
            keys[f"obj/{size // KiB:06d}k-{i:05d}"] = size
    names = list(keys)
    rng.shuffle(names)  # popularity rank is independent of size
    return {k: keys[k] for k in names}


def _body(key: str, size: int) -> bytes:
    """Deterministic, incompressible-enough bytes, rebuilt by readers to check reads."""
    seed = random.Random(key).randbytes(4096)
    return (seed * (size // 4096 + 1))[:size]


def config_for(root: Path, cache_bytes: int, trace: Path) -> dict[str, Any]:
    ram, ssd = cache_bytes // 4, cache_bytes - cache_bytes // 4
    return {
        "tiers": [
            {
                "name": "ram",
                "path": str(Path("/dev/shm") / root.name),
                "capacity": ram,
                "eviction": "lru",
                "verify": "on-change",
            },
            {"name": "ssd", "path": str(root / "ssd"), "capacity": ssd, "eviction": "lru"},
        ],  # fmt: skip
        "validation": {"mode": "ttl", "ttl_seconds": 3600},
        "promotion": {"hits": 2},
        "trace": str(trace),
    }


# -- a reader process ---------------------------------------------------------------------------
def _process_sample() -> tuple[int, int, int]:
    """(RSS bytes, private bytes, open file descriptors) of this process.

    RSS counts the pages of the shared RAM tier a process has mapped (up to the tier's
    size); private memory (``Private_*`` in smaps_rollup) is what a leak would grow.
    """
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    private = 0
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                private += int(line.split()[1]) * 1024
    return rss, private, len(os.listdir("/proc/self/fd"))


def worker(args: dict[str, Any]) -> None:
    from tiercache import TierCacheFileSystem

    fs = TierCacheFileSystem(
        config=args["config"], target_protocol="s3", target_options=args["options"]
    )
    cache, names = fs.cache, fs.config.tier_names
    keys = list(args["keys"])
    sizes = args["keys"]
    rng = random.Random(args["seed"])
    weights = [1 / (rank + 1) ** 0.9 for rank in range(len(keys))]
    cumulative = [0.0]
    for w in weights:
        cumulative.append(cumulative[-1] + w)
    latencies: dict[str, list[float]] = {"ram": [], "ssd": [], "origin": []}
    samples = []
    interval, deadline = args["interval"], args["deadline"]
    next_sample = time.time() + interval
    got = reads = errors = 0
    while time.time() < deadline:
        key = keys[bisect.bisect(cumulative, rng.random() * cumulative[-1]) - 1]
        path, size = f"{BUCKET}/{key}", sizes[key]
        whole = size <= MiB or rng.random() < 0.3
        start = 0 if whole else rng.randrange(0, size - MiB)
        started = time.perf_counter()
        try:
            blob = cache.locate(fs.origin, path)
            end = size if whole else start + MiB
            if blob.data is not None:
                data = bytes(blob.data[start:end])
            else:
                try:
                    data = os.pread(blob.fd, end - start, start)
                finally:
                    os.close(blob.fd)
        except Exception as exc:  # counted and reported, never fatal to the soak
            errors += 1
            print(f"reader {os.getpid()}: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        elapsed = time.perf_counter() - started
        tier = "origin" if blob.missed or blob.entry.tier < 0 else names[blob.entry.tier]
        latencies[tier].append(elapsed)
        if rng.random() < 0.01 and data != _body(key, size)[start:end]:
            errors += 1
            print(f"reader {os.getpid()}: WRONG BYTES for {key}", file=sys.stderr)
        got += len(data)
        reads += 1
        now = time.time()
        if now >= next_sample:
            rss, private, fds = _process_sample()
            samples.append(
                {"t": now, "bytes": got, "reads": reads, "rss": rss, "private": private, "fds": fds}
            )
            got = reads = 0
            next_sample += interval
    cache.flush_access()
    out = {"pid": os.getpid(), "samples": samples, "latencies": latencies, "errors": errors}
    Path(args["out"]).write_text(json.dumps(out))


# -- the run ------------------------------------------------------------------------------------
def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"reads": 0}
    values = sorted(values)

    def q(p: float) -> float:
        return values[min(len(values) - 1, int(p * len(values)))] * 1000

    return {"reads": len(values), "p50_ms": q(0.5), "p99_ms": q(0.99), "p999_ms": q(0.999)}


def run(minutes: float, readers: int, cache_mib: int, interval: float) -> dict[str, Any]:
    from tiercache import TierCacheFileSystem
    from tiercache.simulate import read_trace, simulate

    cache_bytes = cache_mib * MiB
    keys = dataset(cache_bytes)
    root = Path(tempfile.mkdtemp(prefix="tiercache-soak-"))
    trace = root / "access.jsonl"
    config = config_for(root, cache_bytes, trace)
    try:
        with moto_server() as endpoint:
            upload(endpoint, BUCKET, {k: _body(k, s) for k, s in keys.items()})
            options = s3_options(endpoint)
            deadline = time.time() + 60 * minutes + 5  # readers start within those 5 s
            procs = []
            for i in range(readers):
                args = {"config": config, "options": options, "keys": keys, "seed": i,
                        "interval": interval, "deadline": deadline,
                        "out": str(root / f"reader-{i}.json")}  # fmt: skip
                procs.append(
                    subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(args)])
                )
            for p in procs:
                p.wait()
            results = [json.loads((root / f"reader-{i}.json").read_text()) for i in range(readers)]
            fs = TierCacheFileSystem(config=config, target_protocol="s3", target_options=options)
            stats = fs.stats()
            verify = fs.cache.engine.verify() if fs.cache.engine else {"ok": None}
        simulated = simulate(read_trace(trace), ["lru"], [cache_bytes])[0]
        total = read_trace(trace).total_bytes
    finally:
        from tiercache.cache import close_all

        close_all()
        shutil.rmtree(Path("/dev/shm") / root.name, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    return summarize(results, stats, simulated, total, verify, minutes, readers, cache_bytes, keys)


def summarize(
    results: list[dict[str, Any]],
    stats: dict[str, Any],
    simulated: dict[str, Any],
    total: int,
    verify: dict[str, Any],
    minutes: float,
    readers: int,
    cache_bytes: int,
    keys: dict[str, int],
) -> dict[str, Any]:
    start = min(s["t"] for r in results for s in r["samples"]) - 1e-9
    interval: dict[int, dict[str, int]] = {}
    for r in results:
        for s in r["samples"]:
            slot = int((s["t"] - start) // 10)  # 10 s buckets over all readers
            b = interval.setdefault(slot, {"bytes": 0, "reads": 0})
            b["bytes"] += s["bytes"]
            b["reads"] += s["reads"]
    throughput = [
        {"t_s": (k + 1) * 10, "MB_per_s": v["bytes"] / 10 / 1e6, "reads_per_s": v["reads"] / 10}
        for k, v in sorted(interval.items())
    ]
    tiers = {}
    for name in ("ram", "ssd", "origin"):
        tiers[name] = _percentiles([x for r in results for x in r["latencies"][name]])
    processes = []
    for r in results:
        s = r["samples"]
        warm = s[len(s) // 5] if s else None  # growth is judged after a 20 % warm-up
        processes.append({
            "pid": r["pid"],
            "rss_start_mib": s[0]["rss"] / MiB if s else None,
            "rss_warm_mib": warm["rss"] / MiB if warm else None,
            "rss_end_mib": s[-1]["rss"] / MiB if s else None,
            "rss_max_mib": max(x["rss"] for x in s) / MiB if s else None,
            "private_warm_mib": warm["private"] / MiB if warm else None,
            "private_end_mib": s[-1]["private"] / MiB if s else None,
            "fds_warm": warm["fds"] if warm else None,
            "fds_end": s[-1]["fds"] if s else None,
            "fds_max": max(x["fds"] for x in s) if s else None,
            "errors": r["errors"],
        })  # fmt: skip
    expected = simulated["byte_miss_ratio"] * total
    return {
        "minutes": minutes,
        "readers": readers,
        "cache_bytes": cache_bytes,
        "working_set_bytes": sum(keys.values()),
        "objects": len(keys),
        "throughput": throughput,
        "latency_by_tier": tiers,
        "processes": processes,
        "errors": sum(r["errors"] for r in results),
        "hit_ratio": stats["hit_ratio"],
        "origin_bytes": stats["origin"]["bytes"],
        "origin_bytes_simulated_lru": expected,
        "origin_vs_simulated": stats["origin"]["bytes"] / expected if expected else None,
        "origin_errors": stats["origin"]["errors"],
        "bytes_requested": total,
        "verify_ok": verify.get("ok"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--cache-mib", type=int, default=128)
    parser.add_argument("--interval", type=float, default=5.0, help="sampling period, s")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    out = run(args.minutes, args.readers, args.cache_mib, args.interval)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    head = {k: v for k, v in out.items() if k not in ("throughput", "latency_by_tier", "processes")}
    report("soak: throughput over time (all readers)", out["throughput"],
           ["t_s", "MB_per_s", "reads_per_s"], False)  # fmt: skip
    rows = [{"tier": k, **v} for k, v in out["latency_by_tier"].items()]
    report("read latency by serving tier", rows, ["tier", "reads", "p50_ms", "p99_ms", "p999_ms"],
           False)  # fmt: skip
    report("processes (RSS MiB, open fds)", out["processes"],
           ["pid", "rss_start_mib", "rss_warm_mib", "rss_end_mib", "rss_max_mib",
            "private_warm_mib", "private_end_mib", "fds_warm", "fds_end", "fds_max", "errors"],
           False, head)  # fmt: skip


if __name__ == "__main__":
    main()
