"""The shipped presets load, and each tier's eviction spec builds the intended algorithm."""

from __future__ import annotations

import pytest

from tiercache.eviction import policy_from_spec

config = pytest.importorskip("tiercache.config")


@pytest.mark.parametrize(
    ("preset", "ram", "ssd"),
    [("training", "belady", "static"), ("shared", "wtinylfu", "wtinylfu"), ("lru", "lru", "lru")],
)
def test_preset_evictions(preset: str, ram: str, ssd: str) -> None:
    cfg = config.load_config(preset)
    policies = [policy_from_spec(t.eviction, t.capacity) for t in cfg.tiers]
    assert [p.name for p in policies] == [ram, ssd]


def test_training_ram_tier_without_hints_fills_once() -> None:
    """Before the sampler's first hint the training RAM tier behaves as static."""
    cfg = config.load_config("training")
    policy = policy_from_spec(cfg.tiers[0].eviction, 10)
    for key in range(20):
        policy.request(key, 1)
    assert set(policy.resident()) == set(range(10))
    policy.check()
