"""SIGKILL at the worst moments: every acknowledged write reaches S3 with its exact bytes.

Real processes: writers (``tests/write/workers.py``), the engine as a service (``tiercache
engine``), PyTorch DCP; the origin is moto over HTTP behind the fault proxy, which holds or
slows uploads so that each kill lands where the test wants it.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import S3
from tests.reliability.faultproxy import Fault, FaultProxy, wait_until
from tests.reliability.workers import toml
from tests.write.conftest import (
    PART,
    ROOT,
    Worker,
    cache_over,
    keys,
    object_bytes,
    upload_parts,
    write_config,
)


def _acked(log: Path) -> dict[str, str]:
    if not log.exists():
        return {}
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return {r["path"]: r["sha256"] for r in lines}


def _engine_service(config: dict[str, Any], tmp_path: Path) -> Worker:
    cfg = tmp_path / "cache.toml"
    cfg.write_text(toml(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tiercache", "engine", "--config", str(cfg), "--json"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    worker = Worker(proc)
    worker.wait_for("ready")
    return worker


def _assert_at_origin(s3: S3, bucket: str, acked: dict[str, str]) -> None:
    for path, digest in acked.items():
        body = object_bytes(s3, bucket, path.split("/", 1)[1])
        assert body is not None, f"acknowledged {path} is not at the origin"
        assert hashlib.sha256(body).hexdigest() == digest, f"{path} has other bytes"


def test_writer_killed_right_after_close_loses_nothing(
    cache_dirs: dict[str, Path],
    proxy: FaultProxy,
    s3_server: S3,
    bucket: str,
    workers: Any,
    tmp_path: Path,
) -> None:
    config = write_config(cache_dirs)
    log = tmp_path / "acks.jsonl"
    proxy.add(Fault("hang", times=None, method="PUT"), Fault("hang", times=None, method="POST"))
    files = [[f"{bucket}/w/big", 3 * PART + 7, 1], [f"{bucket}/w/small", 999, 2]]
    spec = {"config": config, "endpoint": proxy.endpoint, "files": files, "log": str(log)}
    writer = workers("write", {**spec, "linger": True})
    writer.wait_for("done")
    writer.kill()  # it was the engine too: nothing had reached the origin
    acked = _acked(log)
    assert len(acked) == 2 and keys(s3_server, bucket) == []
    proxy.clear()
    fs = cache_over(config, proxy.endpoint)  # this process becomes the engine and resumes
    assert fs.sync(timeout=120) == []
    _assert_at_origin(s3_server, bucket, acked)


def test_writer_killed_mid_write_leaves_nothing_at_the_origin(
    cache_dirs: dict[str, Path],
    proxy: FaultProxy,
    s3_server: S3,
    bucket: str,
    workers: Any,
) -> None:
    """Its whole parts were on their way before it died: the next engine aborts that
    upload, and the half-written file is never uploaded nor kept."""
    config = write_config(cache_dirs)
    spec = {"config": config, "endpoint": proxy.endpoint, "path": f"{bucket}/half.bin"}
    writer = workers("write_and_hang", {**spec, "size": 3 * PART + 100})
    writer.wait_for("written")
    assert wait_until(lambda: upload_parts(proxy, "half.bin") >= 2, 60)
    writer.kill()
    fs = cache_over(config, proxy.endpoint)  # the next engine (its start-up reaps)
    fs.cache.engine_call("uploads")

    def none_left() -> bool:
        return not s3_server.client.list_multipart_uploads(Bucket=bucket).get("Uploads")

    assert wait_until(none_left, 60)
    assert keys(s3_server, bucket) == []
    write_dir = Path(fs.cache.config.write.path)
    assert wait_until(lambda: not list((write_dir / "open").iterdir()), 30)
    assert fs.uploads() == []


def test_engine_killed_mid_upload_sends_only_the_missing_parts(
    cache_dirs: dict[str, Path],
    proxy: FaultProxy,
    s3_server: S3,
    bucket: str,
    tmp_path: Path,
) -> None:
    config = write_config(cache_dirs, upload_concurrency=1)
    engine = _engine_service(config, tmp_path)
    fs = cache_over(config, proxy.endpoint)
    data = random.Random(5).randbytes(6 * PART)
    # Parts 1-3 go through; part 4 hangs: the engine dies with 3 of 6 parts at the origin.
    proxy.add(Fault("hang", times=None, method="PUT", query="partNumber=", skip=3))
    fs.pipe_file(f"{bucket}/ckpt.bin", data)  # acknowledged: staged and journaled
    journal = fs.cache.staging.journal
    token = journal.pending()[0].token
    assert wait_until(lambda: len(journal.parts_of(token)) == 3, 60)
    engine.kill()
    proxy.clear()
    assert fs.sync(timeout=120) == []  # this process takes over as the engine
    assert object_bytes(s3_server, bucket, "ckpt.bin") == data
    assert upload_parts(proxy, "ckpt.bin") == 3  # parts 4, 5, 6: never 1-3 again
    assert len(proxy.requests("POST", "ckpt.bin")) == 1  # no new upload: just Complete


def test_four_processes_write_at_once(
    cache_dirs: dict[str, Path],
    proxy: FaultProxy,
    s3_server: S3,
    bucket: str,
    workers: Any,
    tmp_path: Path,
) -> None:
    config = write_config(cache_dirs)
    log = tmp_path / "acks.jsonl"
    writers = []
    for w in range(4):
        files = [
            [f"{bucket}/p{w}/a", 2 * PART + w, 10 * w + 1],
            [f"{bucket}/p{w}/b", 70_000 + w, 10 * w + 2],
            [f"{bucket}/p{w}/c", 1000 + w, 10 * w + 3],
        ]
        spec = {"config": config, "endpoint": proxy.endpoint, "files": files, "log": str(log)}
        writers.append(workers("write", spec))
    for writer in writers:
        writer.wait_for("done", timeout=120)
    for writer in writers:
        writer.proc.wait(timeout=120)  # exit normally: whoever was the engine hands over
    fs = cache_over(config, proxy.endpoint)
    assert fs.sync(timeout=120) == []
    acked = _acked(log)
    assert len(acked) == 12
    _assert_at_origin(s3_server, bucket, acked)
    assert sorted(keys(s3_server, bucket)) == sorted(p.split("/", 1)[1] for p in acked)
    write_dir = Path(fs.cache.config.write.path)
    assert wait_until(lambda: not list((write_dir / "data").iterdir()), 30)  # all released


def test_dcp_metadata_never_reaches_s3_before_its_data(
    cache_dirs: dict[str, Path],
    proxy: FaultProxy,
    s3_server: S3,
    bucket: str,
    workers: Any,
) -> None:
    pytest.importorskip("torch")
    config = write_config(cache_dirs)
    # Data parts crawl: the save returns (write-back) long before they are all at S3.
    proxy.add(Fault("slow", times=None, method="PUT", query="partNumber=", delay=1.5))
    spec = {
        "config": config,
        "endpoint": proxy.endpoint,
        "url": f"tiercache::s3://{bucket}/ckpt",
        "tensors": 4,
        "numel": 1_500_000,  # 24 MB of data in __0_0.distcp: five parts
    }
    seen: list[list[str]] = []
    stop = threading.Event()

    def watch() -> None:  # what a reader on another node would see, as often as it can
        while not stop.is_set():
            seen.append(keys(s3_server, bucket, "ckpt/"))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    saver = workers("dcp_save", spec)
    saver.wait_for("saved", timeout=120)
    saver.kill()  # before the data files are durable, so before .metadata may go up
    time.sleep(0.5)
    at_kill = keys(s3_server, bucket, "ckpt/")
    assert "ckpt/.metadata" not in at_kill
    proxy.clear()
    fs = cache_over(config, proxy.endpoint)
    assert fs.sync(timeout=180) == []
    stop.set()
    watcher.join(timeout=5)
    seen.append(keys(s3_server, bucket, "ckpt/"))
    assert seen[-1] == ["ckpt/.metadata", "ckpt/__0_0.distcp"]
    for listing in seen:  # never a .metadata without its data file
        assert "ckpt/.metadata" not in listing or "ckpt/__0_0.distcp" in listing
    # The checkpoint loads from S3 itself, no tiercache involved.
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

    state = {f"w{i}": torch.zeros(1_500_000) for i in range(4)}
    reader = FsspecReader(f"s3://{bucket}/ckpt", **{"endpoint_url": s3_server.endpoint})
    dcp.load(state, storage_reader=reader, no_dist=True)
    assert all(bool((state[f"w{i}"] == float(i)).all()) for i in range(4))


def test_no_acknowledged_file_lost_across_20_random_kills(
    cache_dirs: dict[str, Path],
    proxy: FaultProxy,
    s3_server: S3,
    bucket: str,
    workers: Any,
    tmp_path: Path,
) -> None:
    """Two writers and the engine service, one of them SIGKILLed at a random instant 20
    times over (and started again); then every file any writer acknowledged must be in S3
    with its exact bytes."""
    config = write_config(cache_dirs, capacity="128MiB")
    log = tmp_path / "acks.jsonl"
    rng = random.Random(20)
    spec = {"config": config, "endpoint": proxy.endpoint, "log": str(log), "prefix": bucket}

    def writer(n: int) -> Worker:
        return workers("churn", {**spec, "seed": n, "prefix": f"{bucket}/k"})

    engine = _engine_service(config, tmp_path)
    running = [writer(0), writer(1)]
    kills = 0
    while kills < 20:
        time.sleep(rng.uniform(0.3, 1.5))
        victim = rng.randrange(3)
        if victim == 2:
            engine.kill()
            engine = _engine_service(config, tmp_path)
        else:
            running[victim].kill()
            running[victim] = writer(100 + kills)
        kills += 1
    for w in running:
        w.kill()
    engine.kill()
    acked = _acked(log)
    assert len(acked) >= 10, "the writers hardly wrote anything"
    fs = cache_over(config, proxy.endpoint)
    assert fs.sync(timeout=240) == []
    _assert_at_origin(s3_server, bucket, acked)
