"""First In, First Out: evict the key that was inserted earliest, ignoring hits.

Belady, "A study of replacement algorithms for a virtual-storage computer", IBM Systems
Journal 5(2), 1966 (FIFO is one of the baselines studied there). Hits cost nothing, which is
why FIFO queues are the building block of SIEVE and S3-FIFO; on its own it is rarely the best
choice, but it never reorders anything, so it is the cheapest policy to run.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from .base import EvictionPolicy, Key, PolicyInvariantError


class FIFO(EvictionPolicy):
    name = "fifo"

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._sizes: OrderedDict[Key, int] = OrderedDict()  # oldest insertion first

    def record(self, key: Key, size: int) -> bool:
        return key in self._sizes

    def insert(self, key: Key, size: int) -> list[Key]:
        self.remove(key)
        evicted: list[Key] = []
        if size > self.capacity:
            return evicted
        sizes = self._sizes
        while self.used + size > self.capacity:
            victim, victim_size = sizes.popitem(last=False)
            self.used -= victim_size
            evicted.append(victim)
        sizes[key] = size
        self.used += size
        return evicted

    def remove(self, key: Key) -> None:
        size = self._sizes.pop(key, None)
        if size is not None:
            self.used -= size

    def __contains__(self, key: object) -> bool:
        return key in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def resident(self) -> Iterable[Key]:
        return self._sizes.keys()

    def check(self) -> None:
        super().check()
        if sum(self._sizes.values()) != self.used:
            raise PolicyInvariantError("fifo: resident sizes do not sum to used bytes")
