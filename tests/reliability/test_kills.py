"""Processes killed with SIGKILL at random instants, over and over, and an engine that
dies under readers: nothing partial is ever visible, nothing leaks, nobody notices.

Real processes (multiprocessing's forkserver, preloaded so a start costs a fork) and real
signals; the origin is moto over HTTP. Each churner reads whole objects and ranges and
sends hints, against tiers small enough that every read fetches, evicts, demotes or
promotes something; any one of them may be the engine when it is killed.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lmdb
import pytest

from tests.conftest import S3, make_config, put_objects
from tests.reliability import workers

MiB = 1 << 20
KILLS = 60
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ctx() -> Any:
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["tests.reliability.workers", "tiercache", "s3fs"])
    return context


def _dataset(s3: S3, bucket: str, seed: int, n: int = 18) -> dict[str, str]:
    """About 8 MiB: a third 1 MiB blobs, a third 300 kB, a third small-store objects."""
    rng = random.Random(seed)
    sizes = [[MiB, 300_000, rng.choice([3000, 40_000])][i % 3] for i in range(n)]
    objs = {f"kill/{i:02d}": rng.randbytes(size) for i, size in enumerate(sizes)}
    put_objects(s3, bucket, objs)
    return {f"{bucket}/{k}": hashlib.sha256(v).hexdigest() for k, v in objs.items()}


def _problems(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _verify_cli(config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    cfg = tmp_path / "cache.toml"
    cfg.write_text(workers.toml(config))
    proc = subprocess.run(
        [sys.executable, "-m", "tiercache", "verify", "--json", "--config", str(cfg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def _bytes_on_disk(root: Path) -> tuple[int, int]:
    """(bytes of blob files, bytes of values in small.lmdb) actually present in a tier."""
    files = sum(p.stat().st_size for p in (root / "blobs").rglob("*") if p.is_file())
    env = lmdb.open(str(root / "small.lmdb"), subdir=False, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            small = sum(len(v) for _, v in txn.cursor())
    finally:
        env.close()
    return files, small


def test_sigkill_loop_leaves_a_consistent_cache(
    ctx: Any, cache_dirs: dict[str, Path], s3_server: S3, bucket: str, tmp_path: Path
) -> None:
    rng = random.Random(7)
    digests = _dataset(s3_server, bucket, seed=7)
    # ~8 MiB of data over 1.5 + 3 MiB of tiers; a promotion after a single hit.
    config = make_config(
        cache_dirs, ram="1536KiB", ssd=3 * MiB, promotion={"hits": 1}, prefetch={"concurrency": 2}
    )
    problems = tmp_path / "problems.jsonl"
    args = (config, s3_server.options, digests, str(problems))

    def start() -> Any:
        p = ctx.Process(target=workers.churn, args=args, daemon=True)
        p.start()
        return p

    procs = [start() for _ in range(3)]
    kills = 0
    try:
        while kills < KILLS:
            time.sleep(rng.uniform(0.02, 0.3))
            victim = procs.pop(rng.randrange(len(procs)))
            os.kill(victim.pid, signal.SIGKILL)
            victim.join()
            assert victim.exitcode == -signal.SIGKILL
            kills += 1
            procs.append(start())
    finally:
        for p in procs:
            os.kill(p.pid, signal.SIGKILL)
            p.join()
    assert not _problems(problems), _problems(problems)[:5]

    report = _verify_cli(config, tmp_path)  # a fresh engine: reconciles, then checks
    assert report["ok"], report["problems"]
    for name, root in (("ram", cache_dirs["ram"]), ("ssd", cache_dirs["ssd"] / "ssd")):
        files, small = _bytes_on_disk(root)
        tier = report["tiers"][name]
        assert tier["used_bytes"] == files + small, (name, tier, files, small)
        assert tier["blob_file_bytes"] == files
        assert not list((root / "tmp").iterdir()), f"{name}: temporaries left behind"

    from tiercache import TierCacheFileSystem

    fs = TierCacheFileSystem(config=config, target_protocol="s3", target_options=s3_server.options)
    for path, digest in digests.items():
        assert hashlib.sha256(fs.cat_file(path)).hexdigest() == digest, path
    engine = fs.cache.engine
    assert engine is not None and engine.verify()["ok"]
    # The churn did what it was meant to: killed processes' counts survive in the totals.
    stats = fs.stats()
    assert stats["tiers"]["ram"]["demotions"] > 0 and stats["tiers"]["ssd"]["evictions"] > 0
    assert stats["tiers"]["ssd"]["promotions"] > 0


def test_engine_owner_dies_while_others_read(
    ctx: Any, cache_dirs: dict[str, Path], s3_server: S3, bucket: str, tmp_path: Path
) -> None:
    from tiercache.ipc import EngineLink

    digests = _dataset(s3_server, bucket, seed=11, n=14)
    config = make_config(cache_dirs, ram=MiB, ssd=2 * MiB, promotion={"hits": 1})
    problems, stop = tmp_path / "problems.jsonl", tmp_path / "stop"
    link = EngineLink(Path(config["tiers"][-1]["path"]) / "index" / "engine.sock")

    owner = ctx.Process(
        target=workers.churn, args=(config, s3_server.options, digests, str(problems))
    )
    owner.start()
    deadline = time.monotonic() + 30
    while True:  # wait until the owner runs the engine
        try:
            if link.request({"op": "ping"})[0]["pid"] == owner.pid:
                break
        except Exception:
            pass
        assert time.monotonic() < deadline, "the first process never became the engine"
        time.sleep(0.05)
    link.reset()

    readers = []
    for i in range(3):
        args = (
            config,
            s3_server.options,
            digests,
            str(problems),
            str(stop),
            str(tmp_path / f"r{i}"),
        )
        readers.append(ctx.Process(target=workers.reader, args=args))
        readers[-1].start()
    time.sleep(1.5)
    os.kill(owner.pid, signal.SIGKILL)
    owner.join()
    killed_at = time.time()
    deadline = time.monotonic() + 30
    new_engine = None
    while new_engine is None:  # someone else takes over, on the next miss
        try:
            new_engine = link.request({"op": "ping"})[0]["pid"]
        except Exception:
            assert time.monotonic() < deadline, "nobody took over the engine"
            time.sleep(0.05)
    link.reset()
    assert new_engine in {r.pid for r in readers}
    time.sleep(1.5)  # readers keep going under the new engine
    stop.touch()
    for r in readers:
        r.join(60)
        assert r.exitcode == 0
    results = [json.loads((tmp_path / f"r{i}").read_text()) for i in range(3)]
    assert not _problems(problems), _problems(problems)[:5]
    for res in results:
        assert res["errors"] == 0 and res["reads"] > 0
        assert res["last"] > killed_at, "a reader stopped reading when the engine died"
