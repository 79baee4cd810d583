"""``tiercache stats``: the table and ``--json`` say what ``fs.stats()`` says; ``--watch`` ends
cleanly; mistakes get one clear line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import S3, make_config, put_objects
from tests.metrics.helpers import env_with_repo, fs_for, write_toml

SIZE = 70_000


def tiercache(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tiercache", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env_with_repo(),
    )


def workload(cache_dirs: dict[str, Path], s3: S3, bucket: str) -> Any:
    """5 misses, then 3 RAM hits and 2 SSD hits (RAM holds 3 of the 5)."""
    objs = {f"d/x{i}": os.urandom(SIZE) for i in range(5)}
    put_objects(s3, bucket, objs)
    fs = fs_for(cache_dirs, s3, ram=3 * SIZE + 100, promotion={"hits": 1000})
    for key in objs:
        fs.cat_file(f"{bucket}/{key}")
    fs.cache.engine.wait_idle()  # x0, x1 have moved down to SSD
    for key in objs:
        fs.cat_file(f"{bucket}/{key}")
    fs.cache.engine.wait_idle()
    return fs


def test_json_and_table_match_fs_stats(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, tmp_path: Path
) -> None:
    fs = workload(cache_dirs, s3_server, bucket)
    expected = fs.stats()
    assert (expected["hits"], expected["misses"]) == (5, 5)
    toml = str(write_toml(make_config(cache_dirs, ram=3 * SIZE + 100), tmp_path / "c.toml"))

    out = tiercache("stats", "--config", toml, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == expected

    out = tiercache("stats", "--config", toml)
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines() if line.strip()}
    for name in ("ram", "ssd"):
        t = expected["tiers"][name]
        cells = rows[name]
        # tier entries used unit / capacity unit hits misses ratio evicted demoted promoted
        assert cells[1] == str(t["entries"])
        assert cells[7:10] == [str(t["hits"]), str(t["misses"]), f"{t['hit_ratio'] * 100:.1f}%"]
        assert cells[10:13] == [str(t["evictions"]), str(t["demotions"]), str(t["promotions"])]
    assert rows["ram"][7:10] == ["3", "7", "30.0%"]
    assert rows["ssd"][7:10] == ["2", "5", "28.6%"]
    assert rows["all"][1:4] == ["5", "5", "50.0%"]
    assert rows["origin:"][1:3] == ["5", "reads,"]


def test_watch_refreshes_until_interrupted(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, tmp_path: Path
) -> None:
    fs = workload(cache_dirs, s3_server, bucket)
    toml = str(write_toml(make_config(cache_dirs, ram=3 * SIZE + 100), tmp_path / "c.toml"))
    cmd = [sys.executable, "-m", "tiercache", "stats", "--config", toml, "--json", "--watch", "0.2"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_with_repo()
    )
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())
    fs.cat_file(f"{bucket}/d/x4")  # one more RAM hit shows up in a later refresh
    later = first
    for _ in range(150):  # refreshes every 0.2 s; bounded so a broken --watch fails, not hangs
        later = json.loads(proc.stdout.readline())
        if later["hits"] != first["hits"]:
            break
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert first["hits"] == 5 and later["hits"] == 6


def test_clear_errors(cache_dirs: dict[str, Path], tmp_path: Path) -> None:
    toml = str(write_toml(make_config(cache_dirs), tmp_path / "c.toml"))
    out = tiercache("stats", "--config", toml)  # nothing ever used this cache
    assert out.returncode == 1
    assert "no cache at" in out.stderr and str(cache_dirs["ssd"]) in out.stderr
    out = tiercache("stats", "--policy", "no-such-policy")
    assert out.returncode == 1 and "unknown policy preset 'no-such-policy'" in out.stderr
    out = tiercache("serve-metrics", "--config", toml)
    assert out.returncode == 1 and "--port" in out.stderr and "[metrics] port" in out.stderr
