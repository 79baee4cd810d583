"""One node at scale: engine start-up, memory and hit latency at 10k to 10M entries, and
many reader processes against one engine.

    python benchmarks/scale.py                       # 10k and 1M entries, table
    python benchmarks/scale.py --sizes 10000,1000000,10000000 --json

For each size, a cache is filled the way the engine fills it (index entries and small
blobs in the tier's ``small.lmdb``, written in large transactions so filling a million takes
seconds, not a million origin reads), then ``tiercache engine --json`` is started on it and:

* **first hit / first miss**: seconds from starting the engine's process to the first hit
  and the first miss (a real file of a ``file://`` origin) served to a client process;
* **reconciled**: seconds until start-up (policy replay, blob reconciliation) is done;
* **heap/entry**: the engine process's anonymous memory (``RssAnon``) after start-up,
  less that of an engine over an empty cache, per entry;
* **hit p50 / p99**: latency of 20,000 random 256-byte hits in a client process;
* **readers**: aggregate hits/s of 8 reader processes against 1 (at the largest size),
  with the same engine running.

The baseline of each latency is the 10k figure of the same run (the floor: p99 at 1M within
2x of p99 at 10k).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

OBJECT_BYTES = 256
ORIGIN = "file://"


def config_for(root: Path, entries: int) -> dict[str, Any]:
    """One disk tier big enough for everything (its index beside it), validation off:
    what is measured is the engine and the index, not the origin."""
    return {
        "tiers": [
            {
                "name": "ssd",
                "path": str(root / "ssd"),
                "capacity": max(64 << 20, entries * (OBJECT_BYTES + 64) * 2),
                "eviction": "lru",
            }
        ],
        "validation": {"mode": "never"},
        "index": {"path": str(root / "index")},
    }


def key_of(root: Path, i: int) -> str:
    return f"file://{root}/origin/obj-{i:09d}"


def fill(root: Path, entries: int) -> float:
    """Write ``entries`` index entries and their small blobs; returns seconds taken."""
    from tiercache.config import load_config
    from tiercache.index import Entry, Index, blob_id_for
    from tiercache.tiers.store import BlobMeta, TierStore

    config = load_config(config_for(root, entries))
    started = time.perf_counter()
    index = Index(config.index_path, config.tier_names)
    store = TierStore(config.tiers[0])
    body = os.urandom(OBJECT_BYTES)
    crc = zlib.crc32(body)
    meta = BlobMeta(OBJECT_BYTES, crc, False, True)
    now = time.time()
    rng = random.Random(1)
    chunk = 100_000
    for start in range(0, entries, chunk):
        ids = []
        with index.write() as w:
            for i in range(start, min(entries, start + chunk)):
                key = key_of(root, i)
                # Fetched and last read over the past day: a cache that has been running.
                last = now - rng.random() * 86400
                entry = Entry(key, 0, OBJECT_BYTES, meta, "v1", last, 0, blob_id_for(key),
                              last - 3600)  # fmt: skip
                w.put(entry)
                ids.append(entry.blob_id)
        with store.small.begin(write=True) as txn:
            for blob_id in ids:
                txn.put(blob_id.encode(), body)
        print(f"  filled {min(entries, start + chunk):,} / {entries:,}", file=sys.stderr)
    store.close()
    index.close()
    return time.perf_counter() - started


def toml_for(config: dict[str, Any], path: Path) -> Path:
    tier = config["tiers"][0]
    path.write_text(
        "[[tiers]]\n"
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in tier.items())
        + '[validation]\nmode = "never"\n'
        + f"[index]\npath = {json.dumps(config['index']['path'])}\n"
    )
    return path


def rss_anon(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


class EngineProcess:
    """``tiercache engine --json`` and the events it prints, timed from its start."""

    def __init__(self, toml: Path) -> None:
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tiercache", "engine", "--config", str(toml), "--json",
             "--log-level", "warning"],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        self.events: dict[str, tuple[float, dict[str, Any]]] = {}
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            with self._cond:
                self.events[event["event"]] = (time.perf_counter() - self.started, event)
                self._cond.notify_all()

    def wait(self, event: str, timeout: float = 3600) -> float:
        with self._cond:
            if not self._cond.wait_for(lambda: event in self.events, timeout):
                raise RuntimeError(f"engine did not report {event!r} in {timeout} s")
            return self.events[event][0]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(120)


def first_requests(config: dict[str, Any], root: Path, entries: int, go: Any, result: Any) -> None:
    """In a client process, started and imported beforehand: one hit and one miss as soon
    as the engine says it is ready."""
    from tiercache import TierCacheFileSystem

    go.wait()
    fs = TierCacheFileSystem(config=config, target_protocol="file")
    assert len(fs.cat_file(key_of(root, entries // 2))) == OBJECT_BYTES
    hit_done = time.time()
    fs.cat_file(f"{root}/origin/missing-on-purpose.bin")
    result.put({"hit_done": hit_done, "miss_done": time.time()})


def hit_latencies(
    config: dict[str, Any], root: Path, entries: int, count: int, result: Any
) -> None:
    from tiercache import TierCacheFileSystem

    fs = TierCacheFileSystem(config=config, target_protocol="file")
    rng = random.Random(os.getpid())
    keys = [key_of(root, rng.randrange(entries)) for _ in range(count)]
    for key in keys[:200]:
        fs.cat_file(key)  # warm this process's handles
    times = []
    for key in keys:
        t = time.perf_counter()
        fs.cat_file(key)
        times.append(time.perf_counter() - t)
    times.sort()
    result.put(
        {"p50_us": times[len(times) // 2] * 1e6, "p99_us": times[int(len(times) * 0.99)] * 1e6}
    )


def hits_for(config: dict[str, Any], root: Path, entries: int, seconds: float, go: Any,
             result: Any) -> None:  # fmt: skip
    from tiercache import TierCacheFileSystem

    fs = TierCacheFileSystem(config=config, target_protocol="file")
    rng = random.Random(os.getpid())
    keys = [key_of(root, rng.randrange(entries)) for _ in range(5000)]
    fs.cat_file(keys[0])
    go.wait()
    done, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        for key in keys[:100]:
            fs.cat_file(key)
        done += 100
        keys = keys[100:] + keys[:100]
    result.put(done / seconds)


def aggregate_hits(config: dict[str, Any], root: Path, entries: int, readers: int) -> float:
    ctx = mp.get_context("spawn")
    go, result = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=hits_for, args=(config, root, entries, 5.0, go, result))
             for _ in range(readers)]  # fmt: skip
    for p in procs:
        p.start()
    time.sleep(3 + readers * 0.5)  # every reader imported and opened the cache
    go.set()
    rates = [result.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    return float(sum(rates))


def measure(entries: int, root: Path, readers: int) -> dict[str, Any]:
    config = config_for(root, entries)
    fill_s = fill(root, entries) if entries else 0.0
    (root / "origin").mkdir(parents=True, exist_ok=True)
    (root / "origin" / "missing-on-purpose.bin").write_bytes(os.urandom(4096))
    toml = toml_for(config, root / "cache.toml")
    ctx = mp.get_context("spawn")
    queue, go = ctx.Queue(), ctx.Event()
    client = ctx.Process(target=first_requests, args=(config, root, max(entries, 1), go, queue))
    if entries:
        client.start()
        time.sleep(3)  # imported and waiting
    engine = EngineProcess(toml)
    try:
        ready = engine.wait("ready")
        if entries:
            go.set()
            first = queue.get(timeout=600)
            client.join()
        reconciled = engine.wait("reconciled")
        heap = rss_anon(engine.proc.pid)
        row: dict[str, Any] = {"entries": entries, "fill_s": fill_s, "ready_s": ready,
                               "reconciled_s": reconciled, "rss_anon": heap}  # fmt: skip
        if entries:
            # Seconds from the engine process's start to each request being answered.
            started_wall = time.time() - (time.perf_counter() - engine.started)
            row["first_hit_s"] = first["hit_done"] - started_wall
            row["first_miss_s"] = first["miss_done"] - started_wall
            lat = ctx.Process(target=hit_latencies, args=(config, root, entries, 20_000, queue))
            lat.start()
            row.update(queue.get(timeout=600))
            lat.join()
            if readers:
                one = aggregate_hits(config, root, entries, 1)
                many = aggregate_hits(config, root, entries, readers)
                row.update({"hits_per_s_1": one, f"hits_per_s_{readers}": many,
                            "readers_ratio": many / one})  # fmt: skip
        return row
    finally:
        engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,1000000", help="entries, comma-separated")
    parser.add_argument("--readers", type=int, default=8, help="reader processes (0: skip)")
    parser.add_argument("--dir", default=None, help="where to build caches (default: a temp dir)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    base = Path(args.dir or tempfile.mkdtemp(prefix="tiercache-scale-"))
    rows = []
    try:
        empty = measure(0, base / "empty", 0)
        for n in sizes:
            print(f"{n:,} entries", file=sys.stderr)
            row = measure(n, base / f"n{n}", args.readers if n == sizes[-1] else 0)
            row["heap_per_entry"] = (row.pop("rss_anon") - empty["rss_anon"]) / n
            rows.append(row)
            shutil.rmtree(base / f"n{n}", ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    small = rows[0]
    for row in rows:
        row["p99_vs_smallest"] = row["p99_us"] / small["p99_us"]
    columns = ["entries", "fill_s", "ready_s", "first_hit_s", "first_miss_s", "reconciled_s",
               "heap_per_entry", "p50_us", "p99_us", "p99_vs_smallest"]  # fmt: skip
    extra = {k: v for k, v in rows[-1].items() if k.startswith(("hits_per_s", "readers_ratio"))}
    report("tiercache at scale", rows, columns, args.json, extra)


if __name__ == "__main__":
    main()
