"""Read-path benchmark: warm hits, cold fills and small-object hits against baselines.

    python benchmarks/read_path.py            # table
    python benchmarks/read_path.py --json     # JSON
    python benchmarks/read_path.py --ram-dir /mnt/tiercache-ram   # RAM tier elsewhere

``--ram-dir`` puts the RAM tier on another memory-backed filesystem than ``/dev/shm``, e.g.
a tmpfs mounted with ``huge=within_size`` (see docs/configuration.md).

Everything is measured in one run against moto's S3 server (a separate process, HTTP on
loopback), and every figure is also given as a ratio to its baseline from the same run:

* warm 4 MiB hits from the RAM tier (``cat_file`` and ``open().read()``) vs plain reads of
  the same bytes from local files in the page cache, and vs fsspec ``simplecache`` warm;
* cold: ``warm`` of the whole prefix vs raw concurrent s3fs GETs, and vs ``simplecache``;
* 4 KiB hits per second in a fresh process;
* RAM per cached entry held by the engine (policy state) and the index.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_of, moto_server, report, s3_options, timed, upload  # noqa: E402

MiB = 1 << 20
#: Where the RAM tiers live (``--ram-dir``).
RAM_DIR = Path("/dev/shm")


def tiercache_config(root: Path, ram: int, verify: str | None = "on-change") -> dict[str, Any]:
    """``verify=None`` leaves the key out, as a user's own config would."""
    ram_tier = {
        "name": "ram",
        "path": str(RAM_DIR / "-".join(root.parts[-2:]) / "ram"),
        "capacity": ram,
    }
    if verify is not None:
        ram_tier["verify"] = verify
    return {
        "tiers": [
            ram_tier,
            {"name": "ssd", "path": str(root / "ssd"), "capacity": "2GiB"},
        ],
        "validation": {"mode": "ttl", "ttl_seconds": 600},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=96, help="4 MiB shards (96 = 384 MiB)")
    parser.add_argument("--small", type=int, default=5000, help="4 KiB objects")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--ram-dir", type=Path, default=Path("/dev/shm"), help="RAM tier's filesystem"
    )
    args = parser.parse_args()
    global RAM_DIR
    RAM_DIR = args.ram_dir

    root = Path(tempfile.mkdtemp(prefix="tc-bench-"))
    shm = [RAM_DIR / f"{root.parent.name}-{root.name}", RAM_DIR / f"{root.name}-strict",
           RAM_DIR / f"{root.name}-auto", RAM_DIR / f"{root.name}-plain"]  # fmt: skip
    try:
        with moto_server() as endpoint:
            rows, extra = run(endpoint, root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        for path in shm:
            shutil.rmtree(path, ignore_errors=True)
    report(
        "tiercache read path",
        rows,
        ["case", "what", "rate", "unit", "baseline", "ratio", "floor"],
        args.json,
        extra,
    )


def run(endpoint: str, root: Path, args: argparse.Namespace) -> tuple[list[dict], dict]:
    import fsspec

    from tiercache import TierCacheFileSystem

    opts = s3_options(endpoint)
    shards = {f"shards/shard-{i:05d}.bin": os.urandom(4 * MiB) for i in range(args.shards)}
    small = {f"small/{i:06d}": os.urandom(4096) for i in range(args.small)}
    upload(endpoint, "bench", shards)
    upload(endpoint, "bench", small)
    paths = [f"bench/{k}" for k in shards]
    total = sum(len(v) for v in shards.values())
    rows: list[dict[str, Any]] = []

    def row(
        case: str,
        what: str,
        rate: float,
        unit: str,
        baseline: float | None,
        floor: float | None = None,
    ) -> None:
        rows.append(
            {
                "case": case,
                "what": what,
                "rate": rate,
                "unit": unit,
                "baseline": baseline,
                "ratio": rate / baseline if baseline else None,
                "floor": floor,
            }
        )

    # -- cold ---------------------------------------------------------------------------------
    import s3fs

    raw = s3fs.S3FileSystem(**opts, skip_instance_cache=True)
    raw_s = timed(raw.cat, paths)
    raw_rate = total / raw_s / 1e6
    row("cold", "s3fs.cat(paths), concurrent GETs", raw_rate, "MB/s", None)

    simple = fsspec.filesystem(
        "simplecache",
        target_protocol="s3",
        target_options=opts,
        cache_storage=str(root / "simplecache"),
        skip_instance_cache=True,
    )
    simple_cold_s = timed(lambda: [simple.cat_file(p) for p in paths])
    simple_cold = total / simple_cold_s / 1e6
    row("cold", "simplecache cat_file, sequential", simple_cold, "MB/s", raw_rate)

    fs = TierCacheFileSystem(
        config=tiercache_config(root, 1024 * MiB),
        target_protocol="s3",
        target_options=opts,
        skip_instance_cache=True,
    )
    warm_s = timed(lambda: fs.warm(paths, progress=False))
    warm_rate = total / warm_s / 1e6
    row("cold", "tiercache warm (prefix)", warm_rate, "MB/s", raw_rate, 0.8)
    row("cold", "tiercache warm vs simplecache cold", warm_rate, "MB/s", simple_cold, 2.0)

    # -- warm hits ----------------------------------------------------------------------------
    local = root / "local"
    local.mkdir()
    for k, v in shards.items():
        (local / Path(k).name).write_bytes(v)
    local_paths = [local / Path(k).name for k in shards]

    def read_local() -> None:
        for p in local_paths:
            with open(p, "rb") as f:
                f.read()

    def read_cat() -> None:
        for p in paths:
            fs.cat_file(p)

    def read_open() -> None:
        for p in paths:
            with fs.open(p) as f:
                f.read()

    def read_simple() -> None:
        for p in paths:
            simple.cat_file(p)

    read_local()  # into the page cache
    n = args.rounds
    local_rate = total / best_of(n, read_local) / 1e9
    simple_rate = total / best_of(n, read_simple) / 1e9
    cat_rate = total / best_of(n, read_cat) / 1e9
    open_rate = total / best_of(n, read_open) / 1e9
    row("warm 4 MiB", "local files, open().read() (page cache)", local_rate, "GB/s", None)
    row("warm 4 MiB", "simplecache warm cat_file", simple_rate, "GB/s", local_rate)
    row("warm 4 MiB", "tiercache RAM cat_file", cat_rate, "GB/s", local_rate, 0.75)
    row("warm 4 MiB", "tiercache RAM open().read()", open_rate, "GB/s", local_rate, 0.75)
    row("warm 4 MiB", "tiercache RAM cat_file vs simplecache", cat_rate, "GB/s", simple_rate, 2.0)
    row(
        "warm 4 MiB",
        "tiercache RAM open().read() vs simplecache",
        open_rate,
        "GB/s",
        simple_rate,
        2.0,
    )
    strict = TierCacheFileSystem(
        config=tiercache_config(root / "strict", 1024 * MiB, "always"),
        target_protocol="s3",
        target_options=opts,
        skip_instance_cache=True,
    )
    strict.warm(paths, progress=False)

    def read_strict() -> None:  # results dropped as they come, like the other loops
        for p in paths:
            strict.cat_file(p)

    strict_rate = total / best_of(n, read_strict) / 1e9
    row("warm 4 MiB", "tiercache RAM cat_file, verify=always", strict_rate, "GB/s", local_rate)

    # -- first reads in a fresh process, a user's config without a verify key --------------
    # verify = "auto" is "on-change" on /dev/shm: a new process maps each blob and copies it
    # out, without hashing it (the identity recorded at write time vouches for it).
    shm_copies = RAM_DIR / f"{root.name}-plain"
    shm_copies.mkdir()
    for k, v in shards.items():
        (shm_copies / Path(k).name).write_bytes(v)
    default_verify = tiercache_config(root / "auto", 1024 * MiB, verify=None)
    auto = TierCacheFileSystem(config=default_verify, target_protocol="s3",
                               target_options=opts, skip_instance_cache=True)  # fmt: skip
    auto.warm(paths, progress=False)
    auto.cache.close()  # this cache only: the fresh process becomes its engine
    fresh = json.loads(
        subprocess.run(
            [sys.executable, __file__, "--probe-fresh"],
            input=json.dumps({"config": default_verify, "options": opts, "paths": paths,
                              "plain": str(shm_copies)}),  # fmt: skip
            stdout=subprocess.PIPE, text=True, check=True,
        ).stdout
    )  # fmt: skip
    shutil.rmtree(shm_copies, ignore_errors=True)
    row("fresh 4 MiB", "plain read() of /dev/shm files, new process", fresh["plain"], "GB/s",
        None)  # fmt: skip
    row("fresh 4 MiB", "tiercache RAM cat_file, new process, no verify key", fresh["tiercache"],
        "GB/s", fresh["plain"], 0.75)  # fmt: skip

    # -- small objects, in a fresh process -------------------------------------------------------
    small_paths = [f"bench/{k}" for k in small]
    fs.warm(small_paths, progress=False)
    from tiercache.cache import close_all

    close_all()  # hand the engine over: the probe process measures what an engine holds
    probe = subprocess.run(
        [sys.executable, __file__, "--probe-small"],
        input=json.dumps(
            {
                "config": tiercache_config(root, 1024 * MiB),
                "options": opts,
                "paths": small_paths,
                "rounds": n,
            }
        ),
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    small_result = json.loads(probe.stdout)
    row(
        "4 KiB hits",
        "tiercache cat_file, fresh process",
        small_result["hits_per_s"],
        "hits/s",
        50_000.0,
        1.0,
    )
    extra = {
        "data_bytes": total,
        "engine_bytes_per_entry": small_result["engine_bytes_per_entry"],
        "index_bytes_per_entry": small_result["index_bytes_per_entry"],
        "entries": small_result["entries"],
    }
    return rows, extra


def probe_small() -> None:
    """Runs in a fresh process: small-object hit rate, then the engine's RAM per entry."""
    import tracemalloc

    from tiercache import TierCacheFileSystem

    job = json.loads(sys.stdin.read())
    fs = TierCacheFileSystem(
        config=job["config"], target_protocol="s3", target_options=job["options"]
    )
    paths = job["paths"]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    engine = fs.cache.engine  # becomes the engine: rebuilds policy state for every entry
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert engine is not None
    entries = sum(t["entries"] for t in fs.stats()["tiers"].values())
    for p in paths:  # first touch validates against one listing per prefix
        fs.cat_file(p)
    best = min(timed(lambda: [fs.cat_file(p) for p in paths]) for _ in range(job["rounds"]))
    hits_per_s = len(paths) / best
    index_file = Path(job["config"]["tiers"][-1]["path"]) / "index" / "index.lmdb"
    used = index_file.stat().st_blocks * 512
    print(
        json.dumps(
            {
                "hits_per_s": hits_per_s,
                "entries": entries,
                "engine_bytes_per_entry": (after - before) / entries,
                "index_bytes_per_entry": used / entries,
            }
        )
    )


def probe_fresh() -> None:
    """Runs in a fresh process: each 4 MiB blob read once, the way a new DataLoader worker
    reads its first epoch from a warm cache; against plain reads of the same bytes from
    files on the same filesystem, first, in this same process."""
    from tiercache import TierCacheFileSystem

    job = json.loads(sys.stdin.read())
    plain = sorted(Path(job["plain"]).iterdir())
    total = sum(p.stat().st_size for p in plain)

    def read_plain() -> None:
        for p in plain:
            with open(p, "rb") as f:
                f.read()

    plain_rate = total / timed(read_plain) / 1e9
    fs = TierCacheFileSystem(config=job["config"], target_protocol="s3",
                             target_options=job["options"])  # fmt: skip
    fs.cat_file(job["paths"][0], 0, 1)  # open the cache: not part of the reads

    def read_tiercache() -> None:  # results dropped as they come, as read_plain's are: kept,
        for p in job["paths"]:  # each would fault in 4 MiB of fresh memory
            fs.cat_file(p)

    rate = total / timed(read_tiercache) / 1e9
    print(json.dumps({"plain": plain_rate, "tiercache": rate}))


if __name__ == "__main__":
    if "--probe-fresh" in sys.argv:
        probe_fresh()
    elif "--probe-small" in sys.argv:
        probe_small()
    else:
        main()
