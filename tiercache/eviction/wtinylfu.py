"""W-TinyLFU: a small LRU window, then a frequency filter guarding a segmented-LRU main.

Einziger, Friedman and Manes, "TinyLFU: A Highly Efficient Cache Admission Policy",
ACM Transactions on Storage 13(4), 2017 (the policy behind Caffeine). New keys enter the
window; a key leaving the window enters main only if the count-min sketch
(:mod:`.sketch`) says it is requested more often than the key main would evict for it. Main is
an SLRU (probation 20%, protected 80%). The filter keeps one-off keys and scans out of main, so
it does well on skewed and multi-tenant access.

Behaviour follows libCacheSim's ``WTinyLFU`` (``main-cache=SLRU``) so the two agree:

* ``window_ratio=0.01`` sets main's share (``capacity - int(capacity * window_ratio)``); the
  window itself is bounded only by the total, because making room always drains the window's
  LRU end first, one admission contest per key, until a window key loses (and is evicted);
* the sketch counts insertions, hits and every admission contest entered; it halves after
  ``sample_factor=32`` times as many main hits as main holds keys (libCacheSim's source counts
  hits in main only; counting window hits too is TinyLFU as published, and agreed more closely
  with the libcachesim 0.3.5 wheel on our traces);
* a window key wins only with a strictly higher estimate.

Differences, on purpose: libCacheSim refuses any key larger than the window (1% of the bytes),
which would keep large shards out of a tier altogether; here a key is admitted up to the size
of the probation segment (``window_limits_size=True`` restores libCacheSim's rule). libCacheSim
sizes its sketch for as many keys as main has bytes; here for as many keys as main holds at the
mean key size seen when the cache first fills (see :mod:`.sketch`). A hit that makes probation
overflow leaves it over by up to one key until the next insertion rather than evicting inside
the hit (an access must not evict without telling the engine).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from .base import EvictionPolicy, Key, PolicyInvariantError
from .sketch import FrequencySketch

_WINDOW, _PROBATION, _PROTECTED = 0, 1, 2


class WTinyLFU(EvictionPolicy):
    name = "wtinylfu"

    def __init__(
        self,
        capacity: int,
        window_ratio: float = 0.01,
        protected_ratio: float = 0.8,
        sample_factor: int = 32,
        window_limits_size: bool = False,
    ) -> None:
        super().__init__(capacity)
        if not 0.0 <= window_ratio < 1.0:
            raise ValueError(f"window_ratio must be in [0, 1), got {window_ratio}")
        if not 0.0 < protected_ratio < 1.0:
            raise ValueError(f"protected_ratio must be in (0, 1), got {protected_ratio}")
        if sample_factor < 1:
            raise ValueError(f"sample_factor must be >= 1, got {sample_factor}")
        self.window_ratio = window_ratio
        self.protected_ratio = protected_ratio
        self.sample_factor = sample_factor
        self.window_limits_size = window_limits_size
        self._main_cap = capacity - int(capacity * window_ratio)
        self._protected_cap = int(self._main_cap * protected_ratio)
        self._probation_cap = int(self._main_cap * round(1.0 - protected_ratio, 12))
        self._max_size = self._probation_cap
        if window_limits_size:
            self._max_size = min(self._max_size, int(capacity * window_ratio))
        # key -> size, LRU end first.
        self._window: OrderedDict[Key, int] = OrderedDict()
        self._probation: OrderedDict[Key, int] = OrderedDict()
        self._protected: OrderedDict[Key, int] = OrderedDict()
        self._segment: dict[Key, int] = {}
        self._window_used = self._probation_used = self._protected_used = 0
        self._sketch = FrequencySketch()
        # Main hits since the sketch last aged; it ages every sample_factor x (keys main holds),
        # which is known once the cache first fills (no ageing before, as in libCacheSim
        # where the period is far longer than a warm-up).
        self._main_hits = 0
        self._sample_period = 0

    def record(self, key: Key, size: int) -> bool:
        segment = self._segment.get(key)
        if segment is None:
            return False
        sketch = self._sketch
        sketch.add(key)
        if segment == _WINDOW:
            self._window.move_to_end(key)
            return True
        self._main_hits += 1
        if self._main_hits >= self._sample_period > 0:
            self._main_hits = 0
            sketch.halve()
        if segment == _PROTECTED:
            self._protected.move_to_end(key)
            return True
        # A second hit promotes from probation; protected's LRU end falls back to probation.
        key_size = self._probation.pop(key)
        self._probation_used -= key_size
        protected = self._protected
        protected[key] = key_size
        self._protected_used += key_size
        self._segment[key] = _PROTECTED
        while self._protected_used > self._protected_cap:
            demoted, demoted_size = protected.popitem(last=False)
            self._protected_used -= demoted_size
            self._probation[demoted] = demoted_size
            self._probation_used += demoted_size
            self._segment[demoted] = _PROBATION
        return True

    def admit(self, key: Key, size: int) -> bool:
        return size <= self._max_size

    def insert(self, key: Key, size: int) -> list[Key]:
        self.remove(key)
        evicted: list[Key] = []
        if size > self._max_size:
            return evicted
        while self.used + size > self.capacity:
            self._evict(evicted)
        self._window[key] = size
        self._window_used += size
        self._segment[key] = _WINDOW
        self.used += size
        self._sketch.add(key)
        return evicted

    def _evict(self, evicted: list[Key]) -> None:
        """Drain the window into main until one key is evicted (libCacheSim's order)."""
        window, sketch = self._window, self._sketch
        if not sketch.sized:
            # The first eviction: the cache is full, so the keys it holds now say how many it
            # holds in general (a byte-weighted tier knows nothing about counts before).
            entries = self._main_cap * len(self._segment) // max(1, self.used)
            sketch.size_for(entries)
            self._sample_period = self.sample_factor * max(1, entries)
        while window:
            candidate = next(iter(window))
            size = window[candidate]
            if self._probation_used + self._protected_used + size <= self._main_cap:
                self._leave_window(candidate, size)
                self._main_insert(candidate, size, evicted)
            else:
                victim = next(iter(self._probation or self._protected))
                if sketch.estimate(candidate) > sketch.estimate(victim):
                    self._evict_main(evicted)
                    self._leave_window(candidate, size)
                    self._main_insert(candidate, size, evicted)
                else:
                    self._leave_window(candidate, size)
                    del self._segment[candidate]
                    self.used -= size
                    evicted.append(candidate)
                    sketch.add(candidate)
                    return
            sketch.add(candidate)
        self._evict_main(evicted)

    def _leave_window(self, key: Key, size: int) -> None:
        del self._window[key]
        self._window_used -= size

    def _main_insert(self, key: Key, size: int, evicted: list[Key]) -> None:
        main_fits = self._probation_used + self._protected_used + size <= self._main_cap
        if main_fits and self._probation_used + size <= self._probation_cap:
            segment = _PROBATION
        elif main_fits and self._protected_used + size <= self._protected_cap:
            segment = _PROTECTED  # only while main is still filling
        else:
            while self._probation_used + self._protected_used + size > self._main_cap:
                self._evict_main(evicted)
            segment = _PROBATION
        if segment == _PROBATION:
            self._probation[key] = size
            self._probation_used += size
        else:
            self._protected[key] = size
            self._protected_used += size
        self._segment[key] = segment

    def _evict_main(self, evicted: list[Key]) -> None:
        if self._probation:
            key, size = self._probation.popitem(last=False)
            self._probation_used -= size
        else:
            key, size = self._protected.popitem(last=False)
            self._protected_used -= size
        del self._segment[key]
        self.used -= size
        evicted.append(key)

    def remove(self, key: Key) -> None:
        segment = self._segment.pop(key, None)
        if segment is None:
            return
        if segment == _WINDOW:
            size = self._window.pop(key)
            self._window_used -= size
        elif segment == _PROBATION:
            size = self._probation.pop(key)
            self._probation_used -= size
        else:
            size = self._protected.pop(key)
            self._protected_used -= size
        self.used -= size

    def __contains__(self, key: object) -> bool:
        return key in self._segment

    def __len__(self) -> int:
        return len(self._segment)

    def resident(self) -> Iterable[Key]:
        return self._segment.keys()

    def params(self) -> dict[str, Any]:
        return {
            "window_ratio": self.window_ratio,
            "protected_ratio": self.protected_ratio,
            "sample_factor": self.sample_factor,
            "window_limits_size": self.window_limits_size,
        }

    def check(self) -> None:
        super().check()
        parts = (
            (_WINDOW, self._window, self._window_used),
            (_PROBATION, self._probation, self._probation_used),
            (_PROTECTED, self._protected, self._protected_used),
        )
        for segment, keys, used in parts:
            if sum(keys.values()) != used:
                raise PolicyInvariantError(f"wtinylfu: segment {segment} bytes are off")
            if any(self._segment.get(k) != segment for k in keys):
                raise PolicyInvariantError(f"wtinylfu: segment {segment} holds misfiled keys")
        if sum(len(keys) for _, keys, _ in parts) != len(self._segment):
            raise PolicyInvariantError("wtinylfu: the segment map and the queues disagree")
        if self._window_used + self._probation_used + self._protected_used != self.used:
            raise PolicyInvariantError("wtinylfu: segment bytes differ from used bytes")
        if self._protected_used > self._protected_cap:
            raise PolicyInvariantError("wtinylfu: protected segment over its share")
        if self._probation_used + self._protected_used > self._main_cap:
            raise PolicyInvariantError("wtinylfu: main over its share")
