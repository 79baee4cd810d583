"""Per-process tables stay bounded however long a process runs."""

from tiercache.bounded import Bounded


def test_keeps_the_most_recently_set_items() -> None:
    table: Bounded[str, int] = Bounded(3)
    for i, key in enumerate("abcde"):
        table[key] = i
    table["c"] = 10  # set again: now the most recent
    table["f"] = 5
    assert list(table) == ["e", "c", "f"]
    assert table["c"] == 10
