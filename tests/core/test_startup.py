"""A new engine serves at once and does its start-up work (policy replay, reconciliation)
in the background; what it inherits over capacity moves down, oldest first."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_config
from tiercache import TierCacheFileSystem
from tiercache import startup as startup_module
from tiercache.cache import close_all

KiB = 1 << 10


def _origin(tmp_path: Path, n: int, size: int = 4 * KiB) -> list[str]:
    root = tmp_path / "origin"
    root.mkdir()
    paths = []
    for i in range(n):
        path = root / f"{i:05d}.bin"
        path.write_bytes(os.urandom(size))
        paths.append(str(path))
    return paths


def _fs(config: dict[str, Any]) -> TierCacheFileSystem:
    return TierCacheFileSystem(config=config, target_protocol="file", skip_instance_cache=True)


def _in_a_process_before(fn: Any, *args: Any) -> Any:
    """Run ``fn`` in another process whose engine has exited by the time it returns: the
    cache the test then opens is an inherited one."""
    with mp.get_context("fork").Pool(1) as pool:
        return pool.apply(fn, args)


def _warm(config: dict[str, Any], paths: list[str]) -> None:
    _fs(config).warm(paths, progress=False)
    close_all()


def _read_in_order(config: dict[str, Any], paths: list[str]) -> list[int]:
    fs = _fs(config)
    for path in paths:
        fs.cat_file(path)
        time.sleep(0.002)  # distinct access times
    engine = fs.cache.engine
    engine.wait_idle()
    engine._flush_touched()  # the access times the next engine replays by
    tiers = [fs.cache.index.get(fs.origin.key(p)).tier for p in paths]
    close_all()
    return tiers


def test_misses_and_hits_are_served_while_start_up_is_still_running(
    cache_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _origin(tmp_path, 200)
    config = make_config(cache_dirs, ram="1MiB", ssd="4MiB", validation={"mode": "never"})
    _in_a_process_before(_warm, config, paths[:150])

    held, replaying = threading.Event(), threading.Event()
    replay = startup_module.replay

    def held_replay(engine: Any, scan: Any, report: dict[str, int]) -> None:
        replaying.set()
        held.wait(60)  # a cache so large its replay takes a while
        replay(engine, scan, report)

    monkeypatch.setattr(startup_module, "replay", held_replay)
    fs = _fs(config)
    engine = fs.cache.engine
    assert engine is not None and replaying.wait(10)
    try:
        assert not engine.wait_started(0)
        for path in paths[:3] + paths[190:]:  # hits, and misses, from the engine's process
            with open(path, "rb") as f:
                assert fs.cat_file(path) == f.read()
        # Nothing replayed yet: the tiers' bytes all count as unreplayed, so the misses
        # could not overfill them.
        totals = fs.cache.index.totals()
        for tier in config["tiers"]:
            used = totals[tier["name"]]["used_bytes"]
            assert used <= fs.config.tier(tier["name"]).capacity
    finally:
        held.set()
    assert engine.wait_started(60)
    engine.check()  # the policies now agree with the index exactly
    assert engine.verify()["ok"]


def test_a_tier_that_shrank_moves_its_oldest_entries_down(
    cache_dirs: dict[str, Path], tmp_path: Path
) -> None:
    paths = _origin(tmp_path, 100)
    big = make_config(cache_dirs, ram="1MiB", ssd="4MiB", validation={"mode": "never"})
    assert _in_a_process_before(_read_in_order, big, paths[:64]) == [0] * 64

    small = make_config(cache_dirs, ram=40 * 4 * KiB, ssd="4MiB", validation={"mode": "never"})
    fs = _fs(small)
    engine = fs.cache.engine
    assert engine is not None and engine.wait_started(60)
    engine.wait_idle()
    tiers = [fs.cache.index.get(fs.origin.key(p)).tier for p in paths[:64]]
    assert tiers == [1] * 24 + [0] * 40  # the 24 oldest moved down, none lost
    assert engine.reconciled_at_start["evicted"] == 24
    engine.check()
