"""Replicas of other nodes' keys fill spare room and always leave before owned keys."""

from __future__ import annotations

from tiercache.cluster.replicas import ReplicaFirst
from tiercache.eviction import policy_from_spec


def wrapped(spec: str, capacity: int, replicas: set[str], keep: bool = True) -> ReplicaFirst:
    return ReplicaFirst(policy_from_spec(spec, capacity), replicas.__contains__, keep=keep)


def test_replicas_are_evicted_before_any_owned_key() -> None:
    replicas = {"r1", "r2", "r3"}
    p = wrapped("lru", 100, replicas)
    assert p.insert("o1", 30) == []
    for r in ("r1", "r2", "r3"):
        assert p.admit(r, 20)
        p.insert(r, 20)
    assert p.used == 90 and p.replica_bytes == 60
    # An owned key needing 40 bytes takes the two oldest replicas, not o1 (older than all).
    assert p.insert("o2", 40) == ["r1", "r2"]
    assert "o1" in p and "r3" in p
    p.check()


def test_a_replica_never_displaces_an_owned_key() -> None:
    p = wrapped("lru", 100, {"r1"})
    p.insert("o1", 90)
    assert not p.admit("r1", 20)
    assert p.insert("r1", 20) == [] and "r1" not in p
    p.check()


def test_a_static_tier_full_of_replicas_still_admits_its_owned_keys() -> None:
    replicas = {f"r{i}" for i in range(10)}
    p = wrapped("static", 100, replicas)
    for r in sorted(replicas):
        if p.admit(r, 10):
            p.insert(r, 10)
    assert p.replica_bytes == 100
    assert p.admit("o1", 50)  # static alone would refuse: it is full
    victims = p.insert("o1", 50)
    assert len(victims) == 5 and "o1" in p
    p.check()


def test_a_tier_that_keeps_no_replicas_refuses_them() -> None:
    p = wrapped("lru", 100, {"r1"}, keep=False)
    assert not p.admit("r1", 10)
    assert p.insert("r1", 10) == [] and "r1" not in p


def test_the_budget_the_engine_sets_is_shared_with_the_replicas() -> None:
    p = wrapped("lru", 100, {"r1", "r2"})
    p.insert("r1", 30)
    p.insert("o1", 40)
    p.capacity = 70  # the disk filled up: the next insert must fit in 70
    victims = p.insert("o2", 20)
    assert victims == ["r1"] and p.used == 60
    p.remove("o1")
    assert p.used == 20 and len(p) == 1
    p.check()
