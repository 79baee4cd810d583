"""Node totals: reads by three spawned processes show up, summed, in ``serve-metrics``."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import S3, make_config, put_objects
from tests.metrics import workers
from tests.metrics.helpers import env_with_repo, scrape, total, value, write_toml
from tiercache import TierCacheFileSystem
from tiercache.cache import close_all

SIZE = 50_000
PROCESSES = 3


def test_serve_metrics_sums_every_process(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, tmp_path: Path
) -> None:
    shared = {f"shared/s{i}": os.urandom(SIZE) for i in range(4)}
    own = {f"own/u{i}": os.urandom(SIZE) for i in range(PROCESSES)}
    put_objects(s3_server, bucket, shared | own)
    config = make_config(cache_dirs)
    # Warm the shared objects here (4 misses). This process stays the engine while the
    # children read, as a training script does for its DataLoader workers. (Handing the
    # engine over mid-request can fetch an object twice, which would blur origin bytes.)
    fs = TierCacheFileSystem(config=config, target_protocol="s3", target_options=s3_server.options)
    for key in shared:
        fs.cat_file(f"{bucket}/{key}")
    assert fs.cache.is_engine

    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(
            target=workers.read_through,
            args=(
                config,
                s3_server.options,
                [f"{bucket}/{k}" for k in shared] + [f"{bucket}/own/u{i}"],
                2,
            ),
        )
        for i in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0, f"worker exited with {p.exitcode}"
    # Each child: 4 shared objects twice (8 RAM hits), its own object twice (1 miss, 1 hit).
    hits, misses = PROCESSES * 9, len(shared) + PROCESSES

    toml = write_toml(config, tmp_path / "cache.toml")
    cmd = [sys.executable, "-m", "tiercache", "serve-metrics", "--config", str(toml), "--port", "0"]
    server = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_with_repo()
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert "serving metrics of" in line, line + (server.stderr.read() if server.stderr else "")
        url = line.split(" on ")[-1].strip()
        assert url.startswith("http://127.0.0.1:")
        m = scrape(url)
        assert value(m, "tiercache_requests_total", tier="ram", result="hit") == hits
        assert value(m, "tiercache_requests_total", tier="ssd", result="hit") == 0
        assert value(m, "tiercache_requests_total", tier="ssd", result="miss") == misses
        assert total(m, "tiercache_requests_total") == hits + misses
        assert value(m, "tiercache_bytes_read_total", tier="ram") == hits * SIZE
        assert value(m, "tiercache_bytes_read_total", tier="origin") == misses * SIZE
        assert value(m, "tiercache_origin_requests_total", op="get", status="ok") == misses
        assert value(m, "tiercache_tier_entries", tier="ram") == len(shared) + PROCESSES
        # Alive and counting: this process only; the exited children and the exporter not.
        assert value(m, "tiercache_processes") == 1
        # Looking is not owning: once we stop being the engine, nobody holds its lock.
        close_all()
        fd = os.open(Path(config["tiers"][-1]["path"]) / "index" / "engine.lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    assert "stopped" in err
