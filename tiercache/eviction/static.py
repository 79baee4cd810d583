"""Static: admit keys until the tier is full, then never evict.

Mohan, Phanishayee, Raniwala and Chidambaram, "Analyzing and Mitigating Data Stalls in DNN
Training", VLDB 2021 (CoorDL's "MinIO" cache). When every epoch reads every sample exactly once
in a fresh random order, any fixed set of resident keys gets the same hits per epoch, its size;
so the first keys to fit are as good as any, and evicting only costs origin reads. That makes
this the optimum (Belady's MIN hit ratio) for epoch training at no bookkeeping cost, and the
worst choice for anything whose popular set drifts.
"""

from __future__ import annotations

from .base import Key, SizedPolicy


class Static(SizedPolicy):
    name = "static"

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)

    def record(self, key: Key, size: int) -> bool:
        return key in self._sizes

    def admit(self, key: Key, size: int) -> bool:
        return self.used + size <= self.capacity

    def insert(self, key: Key, size: int) -> list[Key]:
        old = self._sizes.get(key)
        if old is not None:
            if self.used - old + size > self.capacity:
                # Grown past what fits: the only victim a static cache has is the key itself.
                self.remove(key)
                return [key]
            self.used += size - old
            self._sizes[key] = size
            return []
        if self.used + size > self.capacity:
            return [key]  # never evicts to make room; the key is its own victim
        self._sizes[key] = size
        self.used += size
        return []
