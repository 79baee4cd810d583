"""The hold for objects no tier took: what it lets go first when its budget is short."""

from __future__ import annotations

from tiercache.unstored import Held, Unstored


def held(size: int = 10) -> Held:
    return Held(b"x" * size, "v", 0.0)


def test_the_most_read_object_goes_first_and_unread_ones_stay() -> None:
    hold = Unstored(budget=30)
    hold.put("ahead", held(), read=False)  # fetched ahead, nobody has read it yet
    hold.put("a", held(), read=True)
    hold.put("b", held(), read=True)
    hold.put("a", held(), read=True)  # a's second reader
    hold.put("c", held(), read=False)  # over budget: one must go
    assert "a" not in hold
    assert {"ahead", "b", "c"} <= {k for k in ("ahead", "a", "b", "c") if k in hold}


def test_among_equally_read_objects_the_oldest_goes() -> None:
    hold = Unstored(budget=20)
    hold.put("old", held(), read=True)
    hold.put("new", held(), read=True)
    hold.put("next", held(), read=False)
    assert "old" not in hold and "new" in hold and "next" in hold


def test_an_object_larger_than_the_budget_is_not_held() -> None:
    hold = Unstored(budget=5)
    hold.put("big", held(10), read=True)
    assert "big" not in hold and hold.get("big") is None
