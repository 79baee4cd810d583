"""``tiercache demo`` end to end at a small size: its own S3 server, workers, JSON report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_json_reports_every_epoch_and_cleans_up() -> None:
    before = {p.name for p in Path("/dev/shm").glob("tiercache-demo-*")}
    proc = subprocess.run(
        [sys.executable, "-m", "tiercache", "demo", "--size", "8MiB", "--shard-size", "256KiB",
         "--epochs", "2", "--seq-len", "512", "--json", "--no-progress"],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    epochs = report["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    for e in epochs:
        assert {"epoch", "samples", "seconds", "samples_per_s", "bytes_per_s", "hit_ratio",
                "tier_hit_ratio", "origin_bytes", "data_wait_s"} <= e.keys()  # fmt: skip
        assert e["samples"] == 8 * 2**20 // (512 * 2)
        assert set(e["tier_hit_ratio"]) == {"ram", "ssd"}
    # The RAM tier is half the data and the SSD tier all of it: read the origin once.
    assert epochs[0]["origin_bytes"] == 8 * 2**20
    # (32 shards: more than a worker keeps open, so epoch 2 locates shards again)
    assert epochs[1]["origin_bytes"] == 0 and epochs[1]["hit_ratio"] == 1.0
    assert report["tiers"]["ram"] < report["dataset_bytes"]
    assert "Prometheus metrics: http://127.0.0.1:" in proc.stderr
    after = {p.name for p in Path("/dev/shm").glob("tiercache-demo-*")}
    assert after <= before, "the demo left its RAM tier behind"


def test_demo_rejects_bad_sizes() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tiercache", "demo", "--size", "1KiB", "--no-progress"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 1
    assert "--size" in proc.stderr and "Traceback" not in proc.stderr
