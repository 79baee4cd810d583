"""Least Frequently Used: evict the resident key with the fewest hits since it was inserted.

In-cache LFU as in libCacheSim's ``LFU`` (after Matani, Shah and Mitra, "An O(1) algorithm
for implementing the LFU cache eviction scheme", 2010): one FIFO bucket per frequency, so
ties between equally frequent keys go to the one that reached that frequency first, and a
key's count is forgotten when it is evicted (a re-inserted key starts again at 1). That makes
it strong on stable popularity skew and poor when popularity shifts, because old favourites
never age out.
"""

from __future__ import annotations

from collections import OrderedDict

from .base import Key, PolicyInvariantError, SizedPolicy


class LFU(SizedPolicy):
    name = "lfu"

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._freq: dict[Key, int] = {}
        # frequency -> keys at that frequency, in the order they reached it.
        self._buckets: dict[int, OrderedDict[Key, None]] = {}
        self._min_freq = 1

    def record(self, key: Key, size: int) -> bool:
        freq = self._freq.get(key)
        if freq is None:
            return False
        buckets = self._buckets
        bucket = buckets[freq]
        del bucket[key]
        if not bucket:
            del buckets[freq]
            if self._min_freq == freq:
                self._min_freq = freq + 1
        freq += 1
        self._freq[key] = freq
        nxt = buckets.get(freq)
        if nxt is None:
            nxt = buckets[freq] = OrderedDict()
        nxt[key] = None
        return True

    def insert(self, key: Key, size: int) -> list[Key]:
        self.remove(key)
        evicted: list[Key] = []
        if size > self.capacity:
            return evicted
        buckets = self._buckets
        while self.used + size > self.capacity:
            freq = self._min_freq
            bucket = buckets[freq]
            victim, _ = bucket.popitem(last=False)
            if not bucket:
                del buckets[freq]
                self._min_freq = min(buckets) if buckets else 1
            del self._freq[victim]
            self.used -= self._sizes.pop(victim)
            evicted.append(victim)
        self._sizes[key] = size
        self._freq[key] = 1
        ones = buckets.get(1)
        if ones is None:
            ones = buckets[1] = OrderedDict()
        ones[key] = None
        self._min_freq = 1
        self.used += size
        return evicted

    def remove(self, key: Key) -> None:
        freq = self._freq.pop(key, None)
        if freq is None:
            return
        bucket = self._buckets[freq]
        del bucket[key]
        if not bucket:
            del self._buckets[freq]
            if self._min_freq == freq:
                self._min_freq = min(self._buckets) if self._buckets else 1
        self.used -= self._sizes.pop(key)

    def check(self) -> None:
        super().check()
        in_buckets = sum(len(b) for b in self._buckets.values())
        if in_buckets != len(self._sizes) or self._freq.keys() != self._sizes.keys():
            raise PolicyInvariantError("lfu: frequency buckets and residents disagree")
        for freq, bucket in self._buckets.items():
            if not bucket or any(self._freq[k] != freq for k in bucket):
                raise PolicyInvariantError(f"lfu: bucket {freq} is empty or misfiled")
        if self._buckets and self._min_freq != min(self._buckets):
            raise PolicyInvariantError("lfu: min_freq does not point at the lowest bucket")
