"""S3-FIFO: a small probationary FIFO, a main FIFO with reinsertion, and a ghost FIFO.

Yang, Zhang, Qiu, Yue and Rashmi, "FIFO queues are all you need for cache eviction",
SOSP 2023. Most keys in object-store traces are requested once ("one-hit wonders"); a small
FIFO (10% of the bytes) filters them out quickly, keys that prove themselves there move to the
main FIFO (CLOCK-like, 2-bit counter), and a ghost FIFO of recently filtered keys sends a key
that comes back straight to main.

Follows libCacheSim's ``S3FIFO`` (its current variant, not the paper's first one) so the two
agree on any trace:

* ``small_ratio=0.1``, ``ghost_ratio=0.9`` (ghost capacity, in bytes of the keys it remembers),
  ``move_to_main_threshold=2`` (hits while in the small FIFO needed to move to main; the paper
  uses 1, libCacheSim's default is 2);
* until the first eviction, a key that finds the small FIFO full goes to main, so the warm-up
  fills the whole cache;
* a key at least as large as the small FIFO is not admitted (unless the ghost sends it to main).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from .base import EvictionPolicy, Key, PolicyInvariantError


class S3FIFO(EvictionPolicy):
    name = "s3fifo"

    def __init__(
        self,
        capacity: int,
        small_ratio: float = 0.1,
        ghost_ratio: float = 0.9,
        move_to_main_threshold: int = 2,
    ) -> None:
        super().__init__(capacity)
        if not 0.0 < small_ratio < 1.0:
            raise ValueError(f"small_ratio must be in (0, 1), got {small_ratio}")
        if ghost_ratio < 0.0:
            raise ValueError(f"ghost_ratio must be >= 0, got {ghost_ratio}")
        if move_to_main_threshold < 1:
            raise ValueError(f"move_to_main_threshold must be >= 1, got {move_to_main_threshold}")
        self.small_ratio = small_ratio
        self.ghost_ratio = ghost_ratio
        self.move_to_main_threshold = move_to_main_threshold
        self._small_cap = int(capacity * small_ratio)
        self._main_cap = capacity - self._small_cap
        self._ghost_cap = int(capacity * ghost_ratio)
        self._small: OrderedDict[Key, int] = OrderedDict()  # key -> size, oldest first
        self._main: OrderedDict[Key, int] = OrderedDict()
        self._ghost: OrderedDict[Key, int] = OrderedDict()
        self._freq: dict[Key, int] = {}  # resident key -> hits (small) / 2-bit credit (main)
        self._small_used = 0
        self._main_used = 0
        self._ghost_used = 0
        self._has_evicted = False
        self._ghost_hit: Key | None = None  # the last recorded miss that the ghost remembered

    def record(self, key: Key, size: int) -> bool:
        freq = self._freq.get(key)
        if freq is not None:
            self._freq[key] = freq + 1
            return True
        ghost_size = self._ghost.pop(key, None)
        if ghost_size is not None:
            self._ghost_used -= ghost_size
            self._ghost_hit = key
        else:
            self._ghost_hit = None
        return False

    def admit(self, key: Key, size: int) -> bool:
        if key == self._ghost_hit:
            return size <= self._small_cap
        return size < self._small_cap

    def insert(self, key: Key, size: int) -> list[Key]:
        self.remove(key)
        evicted: list[Key] = []
        if size > self._small_cap:
            return evicted
        while self.used + size > self.capacity:
            self._evict_one(evicted)
        if key == self._ghost_hit:
            self._ghost_hit = None
            self._main[key] = size
            self._main_used += size
        elif not self._has_evicted and self._small_used >= self._small_cap:
            self._main[key] = size
            self._main_used += size
        else:
            self._small[key] = size
            self._small_used += size
        self._freq[key] = 0
        self.used += size
        return evicted

    def _evict_one(self, evicted: list[Key]) -> None:
        self._has_evicted = True
        if self._main_used > self._main_cap or not self._small:
            self._evict_main(evicted)
        else:
            self._evict_small(evicted)

    def _evict_small(self, evicted: list[Key]) -> None:
        small, main, freqs = self._small, self._main, self._freq
        while small:
            key, size = small.popitem(last=False)
            self._small_used -= size
            if freqs[key] >= self.move_to_main_threshold:
                # Proved itself while on probation: move to main, starting afresh.
                freqs[key] = 0
                main[key] = size
                self._main_used += size
                continue
            del freqs[key]
            self.used -= size
            evicted.append(key)
            self._remember(key, size)
            return

    def _evict_main(self, evicted: list[Key]) -> None:
        main, freqs = self._main, self._freq
        while main:
            key, size = main.popitem(last=False)
            freq = freqs[key]
            if freq >= 1:
                # Reinsert with one unit of credit spent; the counter saturates at 3.
                freqs[key] = min(freq, 3) - 1
                main[key] = size
                continue
            del freqs[key]
            self._main_used -= size
            self.used -= size
            evicted.append(key)
            return

    def _remember(self, key: Key, size: int) -> None:
        if size > self._ghost_cap:
            return
        ghost = self._ghost
        while self._ghost_used + size > self._ghost_cap:
            _, old_size = ghost.popitem(last=False)
            self._ghost_used -= old_size
        ghost[key] = size
        self._ghost_used += size

    def remove(self, key: Key) -> None:
        if self._freq.pop(key, None) is None:
            return
        size = self._small.pop(key, None)
        if size is not None:
            self._small_used -= size
        else:
            size = self._main.pop(key)
            self._main_used -= size
        self.used -= size

    def __contains__(self, key: object) -> bool:
        return key in self._freq

    def __len__(self) -> int:
        return len(self._freq)

    def resident(self) -> Iterable[Key]:
        return self._freq.keys()

    def params(self) -> dict[str, Any]:
        return {
            "small_ratio": self.small_ratio,
            "ghost_ratio": self.ghost_ratio,
            "move_to_main_threshold": self.move_to_main_threshold,
        }

    def check(self) -> None:
        super().check()
        if sum(self._small.values()) != self._small_used:
            raise PolicyInvariantError("s3fifo: small FIFO bytes are off")
        if sum(self._main.values()) != self._main_used:
            raise PolicyInvariantError("s3fifo: main FIFO bytes are off")
        if sum(self._ghost.values()) != self._ghost_used or self._ghost_used > self._ghost_cap:
            raise PolicyInvariantError("s3fifo: ghost bytes are off or over its capacity")
        if self._small_used + self._main_used != self.used:
            raise PolicyInvariantError("s3fifo: small + main bytes differ from used bytes")
        if self._small.keys() & self._main.keys():
            raise PolicyInvariantError("s3fifo: a key sits in both FIFOs")
        if self._freq.keys() != self._small.keys() | self._main.keys():
            raise PolicyInvariantError("s3fifo: counters and queues hold different keys")
        if self._ghost.keys() & self._freq.keys():
            raise PolicyInvariantError("s3fifo: a resident key is also a ghost")
