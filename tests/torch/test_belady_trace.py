"""The hinted ``belady`` run in the engine makes the same decisions ``tiercache simulate``
makes on the access log that run recorded: what a user simulates is what runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from tests.torch import helpers
from tests.torch.conftest import TokenData
from tiercache.torch import ShardShuffleSampler, TokenDataset

ROOT = Path(__file__).resolve().parents[2]
SHARD = helpers.SHARD_TOKENS * 2  # bytes
BELADY = {"name": "belady", "fallback": "lru", "bypass": False}


def test_hinted_belady_matches_simulate_on_the_recorded_trace(
    token_data: TokenData, cache_dirs: dict[str, Path], tmp_path: Path
) -> None:
    trace = tmp_path / "access.jsonl"
    capacity = 6 * SHARD
    config: dict[str, Any] = {
        "tiers": [{"name": "ram", "path": str(cache_dirs["ram"]), "capacity": capacity,
                   "eviction": BELADY, "verify": "on-change"}],
        "index": {"path": str(cache_dirs["ssd"] / "index")},
        "validation": {"mode": "never"},
        "prefetch": {"depth_bytes": 0},  # decisions from the hint alone, no fetch-ahead
        "trace": str(trace),
    }  # fmt: skip
    ds = TokenDataset(token_data.url, seq_len=helpers.SEQ, storage_options=token_data.options,
                      cache=config, max_open=1)  # fmt: skip
    # window=1: each shard's samples are contiguous, so every epoch opens every shard once,
    # in the order the sampler fixed; the hint covers both epochs, as simulate's future does.
    sampler = ShardShuffleSampler(ds, seed=3, window=1, hint=False)
    plan = []
    for epoch in range(2):
        plan += [ds.shard_paths[s] for s in ds.shard_order(sampler.order(epoch))]
    ds.source.hint(plan)
    for _ in range(2):
        for _ in DataLoader(ds, batch_size=64, sampler=sampler, num_workers=0):
            pass
        ds.close()  # the next epoch opens its first shard again, even if it was the last one

    records = [json.loads(line) for line in trace.read_text().splitlines()]
    assert [r["key"].split("/")[-1] for r in records] == [p.split("/")[-1] for p in plan]
    assert all(r["size"] == SHARD for r in records)
    engine_hits = sum(r["hit"] for r in records)

    proc = subprocess.run(
        [sys.executable, "-m", "tiercache", "simulate", str(trace), "--json", "--no-progress",
         "--eviction", "belady:fallback=lru:bypass=False", "--capacity", str(capacity)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads(proc.stdout)
    assert result["requests"] == len(records) == 2 * token_data.shards
    assert result["hits"] == engine_hits
    # Belady with the whole future: the first epoch misses everything, the second hits the
    # capacity's worth it chose to keep (6 of 16 shards).
    assert engine_hits == 6
