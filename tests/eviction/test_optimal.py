"""The training-aware algorithms reach Belady's optimum on per-epoch permutation traces."""

from __future__ import annotations

import pytest

from . import traces
from .reference import miss_ratios_libcachesim, miss_ratios_ours

pytest.importorskip("libcachesim")


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 0.8])
@pytest.mark.parametrize(
    ("algorithm", "params"),
    [
        ("static", {}),
        ("belady", {}),
        ("belady", {"bypass": True}),
        ("belady", {"fallback": "static", "bypass": True}),  # the training preset's RAM tier
    ],
)
@pytest.mark.parametrize("seed", [1, 2])
def test_reaches_belady_on_epochs(
    algorithm: str, params: dict[str, object], fraction: float, seed: int
) -> None:
    trace = traces.epochs(n_keys=1500, n_epochs=4, seed=seed)
    capacity = int(traces.working_set(trace) * fraction)
    optimum = 1 - miss_ratios_libcachesim("belady", capacity, trace)[0]
    hit_ratio = 1 - miss_ratios_ours(algorithm, capacity, trace, check_every=997, **params)[0]
    assert hit_ratio == pytest.approx(optimum, abs=0.005)


def test_lru_thrashes_where_static_does_not() -> None:
    """The premise of the training preset: at half the dataset LRU hits far less than half."""
    trace = traces.epochs(n_keys=2000, n_epochs=6, seed=3)
    capacity = traces.working_set(trace) // 2
    lru_hits = 1 - miss_ratios_ours("lru", capacity, trace)[0]
    static_hits = 1 - miss_ratios_ours("static", capacity, trace)[0]
    assert lru_hits < 0.2
    # After the first (cold) epoch every epoch hits the half that stayed.
    assert static_hits == pytest.approx(0.5 * 5 / 6, abs=0.005)


def test_belady_without_hints_is_its_fallback() -> None:
    trace = traces.zipf(0.9, n_keys=2000, n_requests=20_000)
    capacity = traces.working_set(trace) // 10
    for fallback in ("lru", "s3fifo"):
        plain = miss_ratios_ours(fallback, capacity, trace)
        from tiercache.eviction import create_policy

        belady = create_policy("belady", capacity, fallback=fallback)  # never hinted
        hits = sum(belady.request(k, s) for k, s in zip(*trace, strict=True))
        belady.check()
        assert 1 - hits / len(trace[0]) == pytest.approx(plain[0], abs=1e-12)


def test_belady_hint_mid_trace_then_fallback() -> None:
    """Hints cover part of the trace: MIN there, the fallback before and after."""
    from tiercache.eviction import create_policy

    keys, sizes = traces.epochs(n_keys=500, n_epochs=4, seed=5)
    policy = create_policy("belady", 200)
    for key, size in zip(keys[:500], sizes[:500], strict=True):
        policy.request(key, size)
    policy.hint(keys[500:1500])
    planned_hits = sum(
        policy.request(k, s) for k, s in zip(keys[500:1500], sizes[500:1500], strict=True)
    )
    policy.check()
    for key, size in zip(keys[1500:], sizes[1500:], strict=True):
        policy.request(key, size)
    policy.check()
    # Two planned epochs with 200 of 500 slots: MIN keeps about 200 hits per epoch.
    assert planned_hits >= 2 * 200 - 10
