"""CLOCK (second chance / FIFO-reinsertion): a FIFO whose hit keys get another lap.

Corbató, "A paging experiment with the Multics system", MIT Project MAC report MAC-M-384,
1968. Each key carries a small saturating counter, raised on a hit; the hand at the old end
evicts a key whose counter is zero and otherwise decrements it and sends the key round again.
It approximates LRU without moving anything on a hit, which is what makes it cheap under
concurrency.

Parameters match libCacheSim's ``Clock``: ``n_bit_counter=1`` (counter saturates at
``2**n_bit_counter - 1``) and ``init_freq=0`` (counter of a newly inserted key).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from .base import Key, PolicyInvariantError, SizedPolicy


class Clock(SizedPolicy):
    name = "clock"

    def __init__(self, capacity: int, n_bit_counter: int = 1, init_freq: int = 0) -> None:
        super().__init__(capacity)
        if not 1 <= n_bit_counter <= 16:
            raise ValueError(f"n_bit_counter must be in 1..16, got {n_bit_counter}")
        self.n_bit_counter = n_bit_counter
        self._max_freq = (1 << n_bit_counter) - 1
        if not 0 <= init_freq <= self._max_freq:
            raise ValueError(f"init_freq must be in 0..{self._max_freq}, got {init_freq}")
        self.init_freq = init_freq
        self._sizes: OrderedDict[Key, int] = OrderedDict()  # the hand sits at the front
        self._freq: dict[Key, int] = {}

    def record(self, key: Key, size: int) -> bool:
        freq = self._freq.get(key)
        if freq is None:
            return False
        if freq < self._max_freq:
            self._freq[key] = freq + 1
        return True

    def insert(self, key: Key, size: int) -> list[Key]:
        self.remove(key)
        evicted: list[Key] = []
        if size > self.capacity:
            return evicted
        sizes, freqs = self._sizes, self._freq
        while self.used + size > self.capacity:
            victim, victim_size = sizes.popitem(last=False)
            freq = freqs[victim]
            if freq:
                # Second chance: spend one unit of credit and go round again.
                freqs[victim] = freq - 1
                sizes[victim] = victim_size
            else:
                del freqs[victim]
                self.used -= victim_size
                evicted.append(victim)
        sizes[key] = size
        freqs[key] = self.init_freq
        self.used += size
        return evicted

    def remove(self, key: Key) -> None:
        size = self._sizes.pop(key, None)
        if size is not None:
            del self._freq[key]
            self.used -= size

    def __contains__(self, key: object) -> bool:
        return key in self._freq

    def params(self) -> dict[str, Any]:
        return {"n_bit_counter": self.n_bit_counter, "init_freq": self.init_freq}

    def check(self) -> None:
        super().check()
        if self._freq.keys() != self._sizes.keys():
            raise PolicyInvariantError("clock: counters and queue hold different keys")
        if any(not 0 <= f <= self._max_freq for f in self._freq.values()):
            raise PolicyInvariantError("clock: a counter left its range")
