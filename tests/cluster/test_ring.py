"""Ownership: one owner per key, shares that follow weights, little movement on change."""

from __future__ import annotations

from collections import Counter

import pytest

from tiercache.cluster.ring import Member, Ring
from tiercache.index import blob_id_for

KEYS = [f"s3://bucket/shard-{i:05d}" for i in range(20_000)]


def shares(ring: Ring) -> Counter[str]:
    return Counter(ring.owner_of_key(k).address for k in KEYS)


def test_every_node_computes_the_same_owner_from_the_same_members() -> None:
    members = [Member(f"10.0.0.{i}:7480") for i in range(1, 5)]
    rings = [Ring(list(reversed(members)) if i % 2 else members, m.address)
             for i, m in enumerate(members)]  # fmt: skip
    for key in KEYS[:2000]:
        owners = {r.owner_of_key(key).address for r in rings}
        assert len(owners) == 1
    assert len({r.fingerprint for r in rings}) == 1
    assert sum(r.owns(blob_id_for(KEYS[0])) for r in rings) == 1


def test_shares_follow_capacity() -> None:
    members = [Member("a:1", 1.0), Member("b:1", 1.0), Member("c:1", 2.0)]
    got = shares(Ring(members, "a:1"))
    for m in members:
        expected = len(KEYS) * m.weight / 4.0
        assert abs(got[m.address] - expected) < 0.05 * len(KEYS), got


def test_adding_a_node_moves_only_the_keys_it_takes() -> None:
    three = Ring([Member(f"n{i}:1") for i in range(3)], "n0:1")
    four = Ring([Member(f"n{i}:1") for i in range(4)], "n0:1")
    moved = [k for k in KEYS if three.owner_of_key(k).address != four.owner_of_key(k).address]
    assert all(four.owner_of_key(k).address == "n3:1" for k in moved)
    assert abs(len(moved) - len(KEYS) / 4) < 0.05 * len(KEYS)


def test_the_ranking_starts_with_the_owner_and_the_next_owner_takes_over_its_keys() -> None:
    ring = Ring([Member(f"n{i}:1") for i in range(4)], "n0:1")
    without = Ring([Member(f"n{i}:1") for i in range(1, 4)], "n1:1")
    for key in KEYS[:2000]:
        ranking = ring.ranking(blob_id_for(key))
        assert ranking[0] == ring.owner_of_key(key)
        assert len({m.address for m in ranking}) == 4
        if ranking[0].address == "n0:1":  # n0 gone: its keys go to their next in line
            assert without.owner_of_key(key).address == ranking[1].address


def test_bad_member_lists_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        Ring([Member("a:1"), Member("a:1")], "a:1")
    with pytest.raises(ValueError, match="not a member"):
        Ring([Member("a:1")], "b:1")
    with pytest.raises(ValueError, match="weight"):
        Ring([Member("a:1", 0.0)], "a:1")
