"""ARC, the Adaptive Replacement Cache: recency and frequency LRUs with a self-tuned split.

Megiddo and Modha, "ARC: A Self-Tuning, Low Overhead Replacement Cache", FAST 2003. T1 holds
keys seen once recently, T2 keys seen at least twice; ghost lists B1 and B2 remember what each
evicted, and a hit on a ghost moves the target size ``p`` of T1 towards the list that would
have kept it. It resists scans (they only churn T1) and adapts between recency and frequency
without a parameter.

Byte-weighted exactly as libCacheSim's ``ARC`` does it, so the two agree: list sizes and ``p``
are in bytes, ``p`` is a float moved by ``max(|B_other| / |B_hit|, 1)`` bytes per ghost hit,
and the paper's case IV ("miss everywhere") drops a ghost only when ``|T1| + |B1|`` or the
whole directory would pass the capacity (or twice it).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from .base import EvictionPolicy, Key, PolicyInvariantError

_NO_GHOST, _IN_B1, _IN_B2 = 0, 1, 2


class ARC(EvictionPolicy):
    name = "arc"

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        # Each list maps key -> size with the LRU end first.
        self._t1: OrderedDict[Key, int] = OrderedDict()
        self._t2: OrderedDict[Key, int] = OrderedDict()
        self._b1: OrderedDict[Key, int] = OrderedDict()
        self._b2: OrderedDict[Key, int] = OrderedDict()
        self._t1_used = self._t2_used = self._b1_used = self._b2_used = 0
        self.p = 0.0  # target bytes for T1
        self._ghost_key: Key | None = None
        self._ghost_list = _NO_GHOST

    def record(self, key: Key, size: int) -> bool:
        t2 = self._t2
        if key in t2:
            t2.move_to_end(key)
            return True
        obj_size = self._t1.pop(key, None)
        if obj_size is not None:
            self._t1_used -= obj_size
            t2[key] = obj_size
            self._t2_used += obj_size
            return True
        self._ghost_key = None
        self._ghost_list = _NO_GHOST
        ghost_size = self._b1.get(key)
        if ghost_size is not None:
            # Case II: T1 was too small for this key; grow its target.
            delta = max(self._b2_used / self._b1_used, 1.0)
            self.p = min(self.p + delta, float(self.capacity))
            del self._b1[key]
            self._b1_used -= ghost_size
            self._ghost_key, self._ghost_list = key, _IN_B1
            return False
        ghost_size = self._b2.get(key)
        if ghost_size is not None:
            # Case III: T2 was too small; shrink T1's target.
            delta = max(self._b1_used / self._b2_used, 1.0)
            self.p = max(self.p - delta, 0.0)
            del self._b2[key]
            self._b2_used -= ghost_size
            self._ghost_key, self._ghost_list = key, _IN_B2
        return False

    def insert(self, key: Key, size: int) -> list[Key]:
        self.remove(key)
        evicted: list[Key] = []
        if size > self.capacity:
            return evicted
        ghost_hit = self._ghost_list if key == self._ghost_key else _NO_GHOST
        while self.used + size > self.capacity:
            if ghost_hit:
                self._replace(ghost_hit == _IN_B2, evicted)
            else:
                self._evict_miss(size, evicted)
        if ghost_hit:
            self._t2[key] = size
            self._t2_used += size
            self._ghost_key, self._ghost_list = None, _NO_GHOST
        else:
            self._t1[key] = size
            self._t1_used += size
        self.used += size
        return evicted

    def _replace(self, hit_in_b2: bool, evicted: list[Key]) -> None:
        """The paper's REPLACE: demote the LRU of T1 or T2 to its ghost list."""
        t1_used = self._t1_used
        if (t1_used > 0 and (t1_used > self.p or (t1_used == self.p and hit_in_b2))) or (
            self._t2_used == 0
        ):
            key, size = self._t1.popitem(last=False)
            self._t1_used -= size
            self._b1[key] = size
            self._b1_used += size
        else:
            key, size = self._t2.popitem(last=False)
            self._t2_used -= size
            self._b2[key] = size
            self._b2_used += size
        self.used -= size
        evicted.append(key)

    def _evict_miss(self, size: int, evicted: list[Key]) -> None:
        """Case IV: the key is in no list."""
        capacity = self.capacity
        if self._t1_used + self._b1_used + size > capacity:
            if self._b1_used > 0:
                _, ghost_size = self._b1.popitem(last=False)
                self._b1_used -= ghost_size
                self._replace(False, evicted)
            else:
                # T1 alone fills the cache: evict its LRU without remembering it.
                key, victim_size = self._t1.popitem(last=False)
                self._t1_used -= victim_size
                self.used -= victim_size
                evicted.append(key)
        else:
            directory = self._t1_used + self._b1_used + self._t2_used + self._b2_used
            if directory >= 2 * capacity and self._b2_used > 0:
                _, ghost_size = self._b2.popitem(last=False)
                self._b2_used -= ghost_size
            self._replace(False, evicted)

    def remove(self, key: Key) -> None:
        size = self._t1.pop(key, None)
        if size is not None:
            self._t1_used -= size
        else:
            size = self._t2.pop(key, None)
            if size is None:
                return
            self._t2_used -= size
        self.used -= size

    def __contains__(self, key: object) -> bool:
        return key in self._t1 or key in self._t2

    def __len__(self) -> int:
        return len(self._t1) + len(self._t2)

    def resident(self) -> Iterable[Key]:
        return [*self._t1, *self._t2]

    def check(self) -> None:
        super().check()
        for name, lst, used in (
            ("T1", self._t1, self._t1_used),
            ("T2", self._t2, self._t2_used),
            ("B1", self._b1, self._b1_used),
            ("B2", self._b2, self._b2_used),
        ):
            if sum(lst.values()) != used:
                raise PolicyInvariantError(f"arc: {name} bytes are off")
        if self._t1_used + self._t2_used != self.used:
            raise PolicyInvariantError("arc: T1 + T2 bytes differ from used bytes")
        keys = [set(self._t1), set(self._t2), set(self._b1), set(self._b2)]
        if sum(map(len, keys)) != len(set().union(*keys)):
            raise PolicyInvariantError("arc: a key is on two lists")
        if not 0.0 <= self.p <= self.capacity:
            raise PolicyInvariantError(f"arc: target p={self.p} outside [0, capacity]")
