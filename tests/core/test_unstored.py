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


def test_an_object_let_go_while_being_read_is_reported_once_when_asked_for_again() -> None:
    hold = Unstored(budget=20)
    hold.put("read", held(), read=True)
    hold.put("ahead", held(), read=False)
    hold.put("next", held(), read=False)  # over budget: "read" goes, mid-read
    assert "read" not in hold
    assert hold.regretted("read")
    assert not hold.regretted("read")  # one origin read, one report
    hold.put("later", held(), read=False)  # "ahead" goes, never read: no regret
    assert "ahead" not in hold and not hold.regretted("ahead")


def test_prefetch_fetches_less_far_ahead_after_the_hold_was_crowded() -> None:
    from types import SimpleNamespace

    from tiercache.prefetch import Prefetcher

    tier = SimpleNamespace(capacity=64 << 20)
    config = SimpleNamespace(tiers=[tier], prefetch=SimpleNamespace(depth_bytes=1 << 30))
    prefetch = Prefetcher(SimpleNamespace(config=config, admission_tier=0))  # type: ignore[arg-type]
    assert prefetch._ahead_limit() == 32 << 20  # half the admission tier
    prefetch.crowded()
    prefetch.crowded()
    assert prefetch._ahead_limit() == 8 << 20
    for _ in range(10):
        prefetch.crowded()
    assert prefetch._ahead_limit() == 2 << 20  # never below 1/16 of the budget
    prefetch._scaled_at -= 11  # 10 s later: twice as far again
    assert prefetch._ahead_limit() == 4 << 20
    prefetch.engine.config.prefetch.depth_bytes = 0  # prefetch off stays off
    assert prefetch._ahead_limit() == 0
