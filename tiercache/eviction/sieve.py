"""SIEVE: a FIFO queue with a moving hand that skips (and un-marks) visited keys.

Zhang, Yang, Yue, Vigfusson and Rashmi, "SIEVE is Simpler than LRU: an Efficient Turn-Key
Eviction Algorithm for Web Caches", NSDI 2024. New keys enter at the head; the hand walks
from the tail towards the head, evicting the first key not visited since the hand last passed
it. Unlike CLOCK, survivors stay where they are, so new keys are demoted quickly ("lazy
promotion, quick demotion"), which suits skewed web and object-store workloads.

The queue is held as two insertion-ordered dicts split at the hand: ``_behind`` (keys the hand
already passed, oldest first) and ``_ahead`` (keys it has not reached yet, oldest first, new
keys appended at the end). Moving the hand is then ``popitem(last=False)`` on ``_ahead``; when
it runs out the hand wraps, which is swapping the two. That keeps every step O(1) with no
linked-list nodes allocated per key.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from .base import EvictionPolicy, Key, PolicyInvariantError


class Sieve(EvictionPolicy):
    name = "sieve"

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._behind: OrderedDict[Key, int] = OrderedDict()
        self._ahead: OrderedDict[Key, int] = OrderedDict()
        self._visited: set[Key] = set()

    def record(self, key: Key, size: int) -> bool:
        if key in self._ahead or key in self._behind:
            self._visited.add(key)
            return True
        return False

    def insert(self, key: Key, size: int) -> list[Key]:
        self.remove(key)
        evicted: list[Key] = []
        if size > self.capacity:
            return evicted
        visited = self._visited
        while self.used + size > self.capacity:
            if not self._ahead:
                # The hand wrapped round to the tail.
                self._ahead, self._behind = self._behind, self._ahead
            victim, victim_size = self._ahead.popitem(last=False)
            if victim in visited:
                visited.discard(victim)
                self._behind[victim] = victim_size
            else:
                self.used -= victim_size
                evicted.append(victim)
        self._ahead[key] = size
        self.used += size
        return evicted

    def remove(self, key: Key) -> None:
        size = self._ahead.pop(key, None)
        if size is None:
            size = self._behind.pop(key, None)
            if size is None:
                return
        self._visited.discard(key)
        self.used -= size

    def __contains__(self, key: object) -> bool:
        return key in self._ahead or key in self._behind

    def __len__(self) -> int:
        return len(self._ahead) + len(self._behind)

    def resident(self) -> Iterable[Key]:
        return [*self._behind, *self._ahead]

    def check(self) -> None:
        super().check()
        if sum(self._ahead.values()) + sum(self._behind.values()) != self.used:
            raise PolicyInvariantError("sieve: resident sizes do not sum to used bytes")
        if self._ahead.keys() & self._behind.keys():
            raise PolicyInvariantError("sieve: a key is on both sides of the hand")
        if not self._visited <= (self._ahead.keys() | self._behind.keys()):
            raise PolicyInvariantError("sieve: a visited mark outlived its key")
