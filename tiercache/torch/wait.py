"""How long the training loop waited for data.

The cache counts ``data_wait_seconds`` where bytes are located (every reader process on the
node, summed); what a trainer feels is the time ``next(loader)`` blocks. This meter measures
the latter around any iterable, so a run can report both.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class DataWaitMeter:
    """``for batch in meter.wrap(loader)``: adds up the time spent blocked in ``next``."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.batches = 0

    def wrap(self, iterable: Iterable[T]) -> Iterator[T]:
        it = iter(iterable)
        while True:
            started = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                self.seconds += time.perf_counter() - started
                return
            self.seconds += time.perf_counter() - started
            self.batches += 1
            yield item

    def reset(self) -> float:
        """Return the seconds counted so far and start again from zero."""
        seconds, self.seconds, self.batches = self.seconds, 0.0, 0
        return seconds
