"""One plan per node: every process's hints merge into the engine's plan, each stream kept in
its own position; a stream read to its end, or whose process died, stops counting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import S3, make_config, put_objects
from tiercache import TierCacheFileSystem
from tiercache.plan import NodePlan, PlannedRead

KiB = 1 << 10
ROOT = Path(__file__).resolve().parents[2]


def _reads(*names: str) -> list[PlannedRead]:
    return [PlannedRead(None, n, n, n) for n in names]


def _paths(reads: list[PlannedRead]) -> list[str]:
    return [r.path for r in reads]


def test_streams_merge_position_by_position_and_keep_their_own_place() -> None:
    plan = NodePlan(window=4)
    plan.update((1, "a"), _reads("a0", "a1", "a2", "a3"))
    merged = plan.update((2, "b"), _reads("b0", "b1", "b2"))
    assert _paths(merged) == ["a0", "b0", "a1", "b1", "a2", "b2", "a3"]
    # Stream a reads two, b none: a re-hint by b keeps a where it is.
    plan.consumed("a0")
    plan.consumed("a1")
    merged = plan.update((2, "b"), _reads("b5", "b6"))
    assert _paths(merged) == ["a2", "b5", "a3", "b6"]
    assert plan.streams() == {(1, "a"): (2, 4), (2, "b"): (0, 2)}


def test_reads_out_of_order_within_the_window_count_and_beyond_it_do_not() -> None:
    plan = NodePlan(window=2)
    plan.update((1, ""), _reads("k0", "k1", "k2", "k3"))
    plan.consumed("k3")  # far ahead of the cursor: not this stream's turn yet
    plan.consumed("k1")  # within the window: consumed ahead of the cursor
    assert plan.streams()[(1, "")] == (0, 4)
    plan.consumed("k0")
    assert plan.streams()[(1, "")] == (2, 4)


def test_a_stream_read_to_its_end_or_whose_process_died_stops_counting() -> None:
    plan = NodePlan()
    plan.update((1, ""), _reads("x", "y"))
    plan.update((2, ""), _reads("z"))
    plan.consumed("z")
    assert set(plan.streams()) == {(1, "")}
    assert plan.drop(lambda pid: pid != 1) == []
    assert plan.streams() == {}


def _hinter(config: dict[str, Any], s3: S3, paths: list[str]) -> subprocess.Popen[str]:
    args = {"mode": "hint", "config": config, "options": s3.options, "paths": paths}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.core.workers", json.dumps(args)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "hinted"
    return proc


def _wait_for(condition: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_hints_from_two_processes_are_both_prefetched(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str
) -> None:
    """Two ranks hint disjoint plans; nobody reads. Before plans merged, the second hint
    replaced the first and only its objects were fetched."""
    objs = {f"ranks/{r}/{i}.bin": os.urandom(256 * KiB) for r in range(2) for i in range(4)}
    put_objects(s3_server, bucket, objs)
    config = make_config(cache_dirs, validation={"mode": "never"})
    fs = TierCacheFileSystem(config=config, target_protocol="s3", target_options=s3_server.options)
    engine = fs.cache.engine  # this process runs the engine; the ranks are clients
    assert engine is not None
    rank_paths = [[f"{bucket}/ranks/{r}/{i}.bin" for i in range(4)] for r in range(2)]
    ranks = [_hinter(config, s3_server, paths) for paths in rank_paths]
    try:
        everything = [p for paths in rank_paths for p in paths]
        assert _wait_for(lambda: all(fs.cache.index.get(fs.origin.key(p)) for p in everything))
        assert len(engine._plan.streams()) == 2
        for path in everything:  # what was prefetched is what the origin holds
            assert fs.cat_file(path) == objs[path.split("/", 1)[1]]
        # Both streams were read to their end: neither counts any more.
        assert engine._plan.streams() == {}
    finally:
        for proc in ranks:
            proc.kill()
            proc.wait()


def test_the_plan_of_a_rank_that_died_is_dropped(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str
) -> None:
    objs = {f"dead/{i}.bin": os.urandom(4 * KiB) for i in range(4)}
    put_objects(s3_server, bucket, objs)
    config = make_config(cache_dirs, validation={"mode": "never"})
    fs = TierCacheFileSystem(config=config, target_protocol="s3", target_options=s3_server.options)
    engine = fs.cache.engine
    assert engine is not None
    rank = _hinter(config, s3_server, [f"{bucket}/dead/{i}.bin" for i in range(4)])
    assert _wait_for(lambda: len(engine._plan.streams()) == 1)
    fs.hint([f"{bucket}/dead/0.bin"])  # this process's own stream
    assert len(engine._plan.streams()) == 2
    rank.kill()
    rank.wait()
    assert _wait_for(lambda: len(engine._plan.streams()) == 1, timeout=10)
    ((pid, _),) = engine._plan.streams()
    assert pid == os.getpid()
