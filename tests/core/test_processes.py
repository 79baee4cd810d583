"""One cache per node: processes share tiers and index, misses are single-flight across
processes, forks and dead engines are survived, and SIGKILL never leaves a broken cache."""

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
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import S3, make_config, put_objects
from tests.core import workers
from tiercache import TierCacheFileSystem

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]


def digest(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_concurrent_misses_across_processes_read_origin_once(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, method: str
) -> None:
    objs = {f"sf/{i}.bin": os.urandom(2 * MiB) for i in range(3)}
    put_objects(s3_server, bucket, objs)
    config = make_config(cache_dirs)
    paths = [f"{bucket}/{k}" for k in objs]
    s3_server.start_counting()
    ctx = mp.get_context(method)
    start_at = time.time() + (3.0 if method == "spawn" else 1.0)
    with ctx.Pool(4) as pool:
        results = pool.starmap(workers.read_at, [(config, s3_server.options, paths, start_at)] * 4)
    expected = {f"{bucket}/{k}": digest(v) for k, v in objs.items()}
    assert all(r == expected for r in results)
    for key in objs:
        assert len(s3_server.requests("GET", key)) == 1, key
    fs = TierCacheFileSystem(config=config, target_protocol="s3", target_options=s3_server.options)
    stats = fs.stats()
    assert stats["requests"] == 12 == stats["hits"] + stats["misses"]
    # Every waiter was served a miss; so was any reader that looked before the object was
    # stored and asked the engine just after (the engine then finds it in a tier).
    assert stats["misses"] >= 3 + stats["singleflight_waits"]
    assert stats["origin"]["reads"] == 3


def test_a_reader_process_pings_the_engine_once_not_per_request(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str
) -> None:
    """A DataLoader worker's hits must not each wait on a round trip to the engine (whose
    process is busy training): it checks the engine is alive when it first connects only."""
    objs = {f"ping/{i}": os.urandom(4096) for i in range(20)}
    put_objects(s3_server, bucket, objs)
    fs = TierCacheFileSystem(
        config=make_config(cache_dirs), target_protocol="s3", target_options=s3_server.options
    )
    paths = [f"{bucket}/{k}" for k in objs]
    fs.warm(paths[:-1], progress=False)  # the parent is the engine; the last one stays a miss
    server = fs.cache._server
    assert server is not None
    ops: Counter[str] = Counter()
    handle = server.handle

    def counting(header: dict[str, Any], payload: bytes) -> Any:
        ops[header["op"]] += 1
        return handle(header, payload)

    server.handle = counting
    pid = os.fork()
    if pid == 0:  # first reads of fresh entries each tell the engine at once (access records)
        ok = all(fs.cat_file(p) == objs[p.split("/", 1)[1]] for p in paths)
        os._exit(0 if ok and not fs.cache.is_engine else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    deadline = time.monotonic() + 10
    while ops["access"] < len(paths) - 1 and time.monotonic() < deadline:
        time.sleep(0.05)  # one-way messages: the engine handles them after the child is gone
    assert ops["access"] == len(paths) - 1 and ops["fetch"] == 1
    assert ops["ping"] == 1


def test_a_closed_engine_leaves_no_thread_behind(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str
) -> None:
    """Closing a cache stops its engine's accept thread (on Linux, closing a listening
    socket alone does not wake a thread blocked in accept)."""
    put_objects(s3_server, bucket, {"t": b"x"})
    fs = TierCacheFileSystem(
        config=make_config(cache_dirs), target_protocol="s3", target_options=s3_server.options
    )
    fs.cat_file(f"{bucket}/t")
    server = fs.cache._server
    assert server is not None and server._acceptor.is_alive()
    fs.cache.close()
    server._acceptor.join(5)
    assert not server._acceptor.is_alive()


def test_a_forked_child_closing_its_copy_of_the_engine_server_leaves_it_serving(
    tmp_path: Path,
) -> None:
    """A child inherits the listening socket; closing its copy (at its exit, say) must not
    shut the socket down or remove its path under the parent."""
    from tiercache.ipc import EngineLink, EngineServer

    server = EngineServer(tmp_path / "engine.sock", lambda header, payload: ({"pong": 1}, b""))
    try:
        pid = os.fork()
        if pid == 0:
            server.close()
            os._exit(0)
        os.waitpid(pid, 0)
        reply, _ = EngineLink(tmp_path / "engine.sock").request({"op": "ping"})
        assert reply == {"pong": 1}
    finally:
        server.close()


def test_forked_child_reads_through_parent_engine(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str
) -> None:
    objs = {"a": os.urandom(MiB), "b": os.urandom(MiB)}
    put_objects(s3_server, bucket, objs)
    fs = TierCacheFileSystem(
        config=make_config(cache_dirs), target_protocol="s3", target_options=s3_server.options
    )
    fs.cat_file(f"{bucket}/a")  # the parent becomes the engine
    assert fs.cache.is_engine
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: a hit (direct) and a miss (through the parent's engine)
        try:
            a_ok = fs.cat_file(f"{bucket}/a") == objs["a"]
            b_ok = fs.cat_file(f"{bucket}/b") == objs["b"]
            ok = a_ok and b_ok and not fs.cache.is_engine
            os.write(w, b"1" if ok else f"{a_ok} {b_ok} {fs.cache.is_engine}".encode())
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(r, 100) == b"1"
    assert fs.cache.index.get(f"s3://{bucket}/b") is not None  # stored by the parent's engine
    assert fs.stats()["origin"]["reads"] == 2


def test_engine_takeover_when_its_process_dies(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str
) -> None:
    objs = {f"t/{i}": os.urandom(MiB) for i in range(6)}
    put_objects(s3_server, bucket, objs)
    config = make_config(cache_dirs, ram=3 * MiB)
    paths = [f"{bucket}/{k}" for k in objs]
    # A separate process becomes the engine, then is killed outright.
    proc = _start_filler(config, s3_server, paths)
    try:
        time.sleep(1.0)
    finally:
        proc.kill()
        proc.wait()
    fs = TierCacheFileSystem(config=config, target_protocol="s3", target_options=s3_server.options)
    for key, body in objs.items():  # read everything right, then take over the engine
        assert fs.cat_file(f"{bucket}/{key}") == body
    assert fs.cache.engine is not None and fs.cache.is_engine
    report = fs.cache.engine.verify()
    assert report["ok"], report["problems"]


def test_engine_hand_over_on_exit_loses_and_repeats_nothing(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    objs = {f"h/{i}": os.urandom(512 * 1024) for i in range(40)}
    put_objects(s3_server, bucket, objs)
    config = make_config(cache_dirs, ram=64 * MiB)
    args = json.dumps({"mode": "engine", "config": config, "options": s3_server.options})
    engine = subprocess.Popen([sys.executable, "-m", "tests.core.workers", args], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert engine.stdout is not None and engine.stdin is not None
    assert engine.stdout.readline().strip() == "ready"
    fs = TierCacheFileSystem(config=config, target_protocol="s3", target_options=s3_server.options)
    s3_server.start_counting()
    keys = sorted(objs)
    with ThreadPoolExecutor(4) as pool:
        first = list(pool.map(lambda k: fs.cat_file(f"{bucket}/{k}"), keys[:20]))
        futures = [pool.submit(fs.cat_file, f"{bucket}/{k}") for k in keys[20:]]
        engine.stdin.write("exit\n")  # the engine's process exits while misses are in flight
        engine.stdin.flush()
        rest = [f.result() for f in futures]
    assert engine.wait(30) == 0
    assert first + rest == [objs[k] for k in keys]
    assert fs.cache.is_engine  # this process took over
    for key in keys:
        assert len(s3_server.requests("GET", key)) == 1, key


def _start_filler(config: dict[str, Any], s3: S3, paths: list[str]) -> subprocess.Popen:
    args = json.dumps({"config": config, "options": s3.options, "paths": paths})
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.core.workers", args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_sigkill_at_random_points_leaves_a_consistent_cache(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str
) -> None:
    rng = random.Random(42)
    objs = {f"k/{i}": os.urandom(rng.choice([3000, 300_000, MiB])) for i in range(16)}
    put_objects(s3_server, bucket, objs)
    # Small tiers, so fills evict, demote and promote all the time.
    config = make_config(cache_dirs, ram=2 * MiB, ssd=4 * MiB, promotion={"hits": 1})
    paths = [f"{bucket}/{k}" for k in objs]
    for _ in range(8):
        procs = [_start_filler(config, s3_server, paths) for _ in range(2)]
        time.sleep(rng.uniform(0.05, 0.6))
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
    fs = TierCacheFileSystem(config=config, target_protocol="s3", target_options=s3_server.options)
    for key, body in objs.items():
        assert fs.cat_file(f"{bucket}/{key}") == body
    report = fs.cache.engine.verify()
    assert report["ok"], report["problems"]
    for name, tier in report["tiers"].items():
        root = cache_dirs["ram"] if name == "ram" else cache_dirs["ssd"] / "ssd"
        on_disk = sum(p.stat().st_size for p in (root / "blobs").rglob("*") if p.is_file())
        assert on_disk == tier["blob_file_bytes"]  # no space leaked to orphans
        assert not list((root / "tmp").iterdir())  # no half-written temporaries
