"""Origin listings kept on disk for offline mode do not pile up: old ones are deleted, and
at most a fixed number are kept."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tiercache.engine import clean_listings


def test_old_listings_go_and_at_most_keep_stay(tmp_path: Path) -> None:
    now = time.time()
    for i in range(6):
        path = tmp_path / f"listing-{i}.json"
        path.write_text("{}")
        age = 8 * 86400 if i < 2 else i  # two are older than a week
        os.utime(path, (now - age, now - age))
    assert clean_listings(tmp_path, keep=3) == 3  # the two old ones and the oldest recent
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"listing-{i}.json" for i in (2, 3, 4)]
    assert clean_listings(tmp_path / "absent") == 0
