"""Belady with a sampler's plan: the plan lists each shard once, readers open it more than
once and not quite in order (DataLoader workers); the clock must stay in step."""

from __future__ import annotations

import random
from collections import OrderedDict

from tiercache.eviction import create_policy


def origin_reads(plan: list[int], accesses: list[int], capacity: int, window: int) -> float:
    """Share of accesses that read the origin, in the engine's terms: a key the policy does
    not store is held for a few accesses (``tiercache/unstored.py``) for its other readers."""
    policy = create_policy(
        "belady", capacity, fallback="static", bypass=True, reorder_window=window
    )
    policy.hint(plan)
    held: OrderedDict[int, None] = OrderedDict()
    reads = 0
    for key in accesses:
        if policy.record(key, 1):
            continue
        if key in held:
            held.move_to_end(key)
        else:
            reads += 1
            held[key] = None
            if len(held) > 4:
                held.popitem(last=False)
        if policy.admit(key, 1):
            policy.insert(key, 1)
            held.pop(key, None)
    policy.check()
    return reads / len(accesses)


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
    exact = origin_reads(accesses, accesses, capacity, window=0)
    by_shard = origin_reads(plan, accesses, capacity, window=8)
    one_step = origin_reads(plan, accesses, capacity, window=0)  # the clock runs too fast
    print(
        f"origin reads: exact plan {exact:.3f}, per-shard plan {by_shard:.3f}, "
        f"per-shard plan with a one-step clock {one_step:.3f}"
    )
    # The optimum: every key once in the first epoch, then all but the cached ones.
    optimum = (keys + (keys - capacity) * (epochs - 1)) / len(accesses)
    assert exact <= optimum + 0.01
    assert by_shard <= optimum + 0.01, (by_shard, optimum)


def test_an_exact_plan_is_the_one_step_clock() -> None:
    """With the whole trace as the plan every access is the next position (simulate)."""
    rng = random.Random(5)
    trace = [rng.randrange(30) for _ in range(2000)]
    policy = create_policy("belady", 10)
    policy.hint(trace)
    for i, key in enumerate(trace):
        policy.request(key, 1)
        assert policy._now == i + 1


def _read(policy: object, key: str) -> None:
    """A reader's access, stored on a miss if the policy admits it (as the engine does)."""
    if not policy.record(key, 1) and policy.admit(key, 1):  # type: ignore[attr-defined]
        policy.insert(key, 1)  # type: ignore[attr-defined]


def test_a_prefetch_never_displaces_a_key_the_plan_reads_again() -> None:
    """Fetched ahead, a key is judged by its reads after the one coming (its reader gets
    it from a slower tier or the engine's hold): residents the plan reads again stay."""
    policy = create_policy("belady", 2, fallback="static", bypass=True)
    policy.hint(["a", "b", "c", "a", "b"])
    _read(policy, "a")
    _read(policy, "b")  # both residents are read again; c is not
    assert not policy.admit_ahead("c", 1)
