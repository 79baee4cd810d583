"""Node totals never go down while processes come and go and dead files are folded.

Prometheus takes any decrease of a counter for a reset, so a total that dips for one scrape
shows up as a spike in every ``rate()``. And a process's counts must not be lost when the
engine folds dead processes' files at the moment a new process creates its own.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from pathlib import Path

from tiercache.counters import Counters, slot

PROCESSES = 150


def _count_once_and_die(directory: str) -> None:
    Counters(Path(directory)).add("misses")
    os._exit(0)  # no clean-up: its file is left behind, dead, for the folder


def test_totals_are_monotonic_and_complete_under_folding(tmp_path: Path) -> None:
    reader, folder = Counters(tmp_path), Counters(tmp_path)
    stop = threading.Event()
    decreases: list[tuple[int, int]] = []
    folds = 0

    def fold() -> None:
        nonlocal folds
        while not stop.is_set():
            folds += folder.fold_dead()

    def watch() -> None:
        last = 0
        while not stop.is_set():
            now = reader.snapshot()[slot("misses")]
            if now < last:
                decreases.append((last, now))
            last = max(last, now)

    threads = [threading.Thread(target=fold), threading.Thread(target=watch)]
    for t in threads:
        t.start()
    ctx = multiprocessing.get_context("fork")
    try:
        for _ in range(PROCESSES):
            p = ctx.Process(target=_count_once_and_die, args=(str(tmp_path),))
            p.start()
            p.join()
            assert p.exitcode == 0
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert decreases == []
    assert folds > 0  # the folder really raced the readers
    folder.fold_dead()
    assert reader.snapshot()[slot("misses")] == PROCESSES  # nobody's count was lost
