"""Belady with a sampler's plan: the plan lists each shard once, readers open it more than
once and not quite in order (DataLoader workers); the clock must stay in step."""

from __future__ import annotations

import random

from tiercache.eviction import create_policy


def replay(policy_hint: list[int], accesses: list[int], capacity: int, window: int) -> float:
    policy = create_policy(
        "belady", capacity, fallback="static", bypass=True, reorder_window=window
    )
    policy.hint(policy_hint)
    hits = 0
    for key in accesses:
        hit = policy.record(key, 1)
        if not hit and policy.admit(key, 1):
            policy.insert(key, 1)
        hits += hit
    policy.check()
    return hits / len(accesses)


def test_plan_of_shards_matches_a_plan_of_every_access() -> None:
    rng = random.Random(3)
    keys, capacity, epochs = 40, 20, 4
    plan: list[int] = []
    for _ in range(epochs):
        order = list(range(keys))
        rng.shuffle(order)
        plan += order
    # Two readers open every shard; their reads interleave with small reorderings.
    accesses = [k for k in plan for _ in range(2)]
    for i in range(0, len(accesses) - 3, 3):
        if rng.random() < 0.5:
            accesses[i + 1], accesses[i + 3] = accesses[i + 3], accesses[i + 1]
    exact = replay(accesses, accesses, capacity, window=0)
    by_shard = replay(plan, accesses, capacity, window=8)
    one_step = replay(plan, accesses, capacity, window=0)  # the clock runs twice too fast
    assert exact > 0.6  # the second read of each shard hits, and half the shards stay
    assert by_shard >= exact - 0.02, (by_shard, exact)
    assert one_step < by_shard - 0.05, (one_step, by_shard)


def test_an_exact_plan_is_the_one_step_clock() -> None:
    """With the whole trace as the plan every access is the next position (simulate)."""
    rng = random.Random(5)
    trace = [rng.randrange(30) for _ in range(2000)]
    policy = create_policy("belady", 10)
    policy.hint(trace)
    for i, key in enumerate(trace):
        policy.request(key, 1)
        assert policy._now == i + 1
