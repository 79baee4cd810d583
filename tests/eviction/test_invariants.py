"""Every algorithm keeps its own bookkeeping straight under the calls the engine makes.

The engine records accesses, admits and inserts on misses, removes keys it promotes or
invalidates, re-inserts keys whose size changed, and passes hints. Random sequences of those
calls must leave ``check()`` happy, residency consistent with what ``insert`` reported, and
the bytes within capacity.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiercache.eviction import REGISTRY, create_policy

ALGORITHMS = sorted(REGISTRY)

ops = st.lists(
    st.tuples(
        st.sampled_from(["request", "request", "request", "remove", "resize", "hint"]),
        st.integers(0, 40),  # key
        st.integers(1, 40),  # size
    ),
    min_size=30,
    max_size=400,
)


@pytest.mark.parametrize("name", ALGORITHMS)
@settings(max_examples=200, deadline=None)
@given(operations=ops, capacity=st.integers(0, 200))
def test_random_operations_keep_invariants(name: str, operations, capacity: int) -> None:
    policy = create_policy(name, capacity)
    resident: set[int] = set()  # what the calls' results say is resident
    for index, (op, key, size) in enumerate(operations):
        if op == "request":
            hit = policy.record(key, size)
            assert hit == (key in resident), f"{name}: record() disagrees with residency"
            if not hit and policy.admit(key, size):
                evicted = policy.insert(key, size)
                resident.difference_update(evicted)
                if key not in evicted and key in policy:
                    resident.add(key)
        elif op == "remove":
            policy.remove(key)
            resident.discard(key)
        elif op == "resize" and key in resident:
            evicted = policy.insert(key, size)
            resident.difference_update(evicted)
            if key not in policy:
                resident.discard(key)
        elif op == "hint":
            policy.hint([k for _, k, _ in operations[index + 1 :]])
        policy.check()
        assert set(policy.resident()) == resident, f"{name}: resident keys drifted"
        assert len(policy) == len(resident)
        assert policy.used <= policy.capacity


@pytest.mark.parametrize("name", ALGORITHMS)
def test_object_larger_than_capacity_is_never_resident(name: str) -> None:
    policy = create_policy(name, 100)
    policy.request("small", 10)
    assert not policy.request("huge", 101)
    assert "huge" not in policy
    assert not policy.request("huge", 101)
    policy.check()


@pytest.mark.parametrize("name", ALGORITHMS)
def test_long_variable_size_run_then_check(name: str) -> None:
    rng = random.Random(7)
    policy = create_policy(name, 50_000)
    policy.hint([rng.randrange(3000) for _ in range(1000)])
    sizes = {k: rng.randint(1, 2000) for k in range(3000)}
    for step in range(30_000):
        key = int(rng.paretovariate(0.8)) % 3000
        policy.request(key, sizes[key])
        if step % 5000 == 0:
            policy.check()
    policy.check()
    assert 0 < policy.used <= policy.capacity


@pytest.mark.parametrize("name", ALGORITHMS)
def test_zero_capacity_holds_nothing(name: str) -> None:
    policy = create_policy(name, 0)
    for key in range(10):
        assert not policy.request(key, 1)
    assert len(policy) == 0 and policy.used == 0
    policy.check()
