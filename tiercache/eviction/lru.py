"""Least Recently Used: evict the key whose last access is oldest.

Mattson, Gecsei, Slutz and Traiger, "Evaluation techniques for storage hierarchies", IBM
Systems Journal 9(2), 1970 (the stack-algorithm analysis that made LRU the reference).

The baseline every other algorithm is measured against, and what page caches, fsspec's
caches and most dataset loaders effectively do. Under per-epoch random permutations it
thrashes: with a cache of fraction c of the data it hits far less than the fraction it holds
(see docs/policies.md); it is still the right choice for strongly recency-driven access.
"""

from __future__ import annotations

from collections import OrderedDict

from .base import Key, SizedPolicy


class LRU(SizedPolicy):
    name = "lru"

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._sizes: OrderedDict[Key, int] = OrderedDict()  # oldest first

    def record(self, key: Key, size: int) -> bool:
        if key in self._sizes:
            self._sizes.move_to_end(key)
            return True
        return False

    def insert(self, key: Key, size: int) -> list[Key]:
        self.remove(key)
        evicted: list[Key] = []
        sizes = self._sizes
        while sizes and self.used + size > self.capacity:
            victim, victim_size = sizes.popitem(last=False)
            self.used -= victim_size
            evicted.append(victim)
        if size > self.capacity:
            return evicted
        sizes[key] = size
        self.used += size
        return evicted
