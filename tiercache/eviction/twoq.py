"""2Q: a FIFO for first-time keys (A1in), a ghost FIFO of their ids (A1out), an LRU (Am).

Johnson and Shasha, "2Q: A Low Overhead High Performance Buffer Management Replacement
Algorithm", VLDB 1994 (the "full version"). A key enters A1in; hits there change nothing, so a
scan or a burst of one-time keys passes through without touching Am. A key evicted from A1in
is remembered in A1out, and if it is requested again while remembered it goes to Am, the LRU
of keys that proved to be re-used.

Registered as ``"2q"``. Parameters and behaviour match libCacheSim's ``TwoQ``:
``a_in_ratio=0.25`` (A1in's share of the bytes; Am gets the rest), ``a_out_ratio=0.5`` (A1out
capacity, in bytes of the keys it remembers). As there, a key larger than A1in's share is never
admitted.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from .base import EvictionPolicy, Key, PolicyInvariantError


class TwoQ(EvictionPolicy):
    name = "2q"

    def __init__(self, capacity: int, a_in_ratio: float = 0.25, a_out_ratio: float = 0.5) -> None:
        super().__init__(capacity)
        if not 0.0 < a_in_ratio < 1.0:
            raise ValueError(f"a_in_ratio must be in (0, 1), got {a_in_ratio}")
        if a_out_ratio < 0.0:
            raise ValueError(f"a_out_ratio must be >= 0, got {a_out_ratio}")
        self.a_in_ratio = a_in_ratio
        self.a_out_ratio = a_out_ratio
        self._in_cap = int(capacity * a_in_ratio)
        self._out_cap = int(capacity * a_out_ratio)
        self._main_cap = capacity - self._in_cap
        self._in: OrderedDict[Key, int] = OrderedDict()  # A1in, oldest first
        self._out: OrderedDict[Key, int] = OrderedDict()  # A1out (ghost), oldest first
        self._main: OrderedDict[Key, int] = OrderedDict()  # Am, LRU first
        self._in_used = self._out_used = self._main_used = 0
        self._ghost_hit: Key | None = None

    def record(self, key: Key, size: int) -> bool:
        if key in self._in:
            return True
        main = self._main
        if key in main:
            main.move_to_end(key)
            return True
        ghost_size = self._out.pop(key, None)
        if ghost_size is not None:
            self._out_used -= ghost_size
            self._ghost_hit = key
        else:
            self._ghost_hit = None
        return False

    def admit(self, key: Key, size: int) -> bool:
        return size <= self._in_cap

    def insert(self, key: Key, size: int) -> list[Key]:
        self.remove(key)
        evicted: list[Key] = []
        if size > self._in_cap:
            return evicted
        while self.used + size > self.capacity:
            if self._in_used > self._in_cap or not self._main:
                victim, victim_size = self._in.popitem(last=False)
                self._in_used -= victim_size
                self._remember(victim, victim_size)
            else:
                victim, victim_size = self._main.popitem(last=False)
                self._main_used -= victim_size
            self.used -= victim_size
            evicted.append(victim)
        if key == self._ghost_hit:
            self._ghost_hit = None
            # Am keeps within its own share, evicting its LRU keys.
            main = self._main
            while main and self._main_used + size > self._main_cap:
                victim, victim_size = main.popitem(last=False)
                self._main_used -= victim_size
                self.used -= victim_size
                evicted.append(victim)
            if size <= self._main_cap:
                main[key] = size
                self._main_used += size
                self.used += size
            return evicted
        self._in[key] = size
        self._in_used += size
        self.used += size
        return evicted

    def _remember(self, key: Key, size: int) -> None:
        if size > self._out_cap:
            return
        out = self._out
        while self._out_used + size > self._out_cap:
            _, old_size = out.popitem(last=False)
            self._out_used -= old_size
        out[key] = size
        self._out_used += size

    def remove(self, key: Key) -> None:
        size = self._in.pop(key, None)
        if size is not None:
            self._in_used -= size
        else:
            size = self._main.pop(key, None)
            if size is None:
                return
            self._main_used -= size
        self.used -= size

    def __contains__(self, key: object) -> bool:
        return key in self._in or key in self._main

    def __len__(self) -> int:
        return len(self._in) + len(self._main)

    def resident(self) -> Iterable[Key]:
        return [*self._in, *self._main]

    def params(self) -> dict[str, Any]:
        return {"a_in_ratio": self.a_in_ratio, "a_out_ratio": self.a_out_ratio}

    def check(self) -> None:
        super().check()
        if sum(self._in.values()) != self._in_used:
            raise PolicyInvariantError("2q: A1in bytes are off")
        if sum(self._main.values()) != self._main_used or self._main_used > self._main_cap:
            raise PolicyInvariantError("2q: Am bytes are off or over its share")
        if sum(self._out.values()) != self._out_used or self._out_used > self._out_cap:
            raise PolicyInvariantError("2q: A1out bytes are off or over its capacity")
        if self._in_used + self._main_used != self.used:
            raise PolicyInvariantError("2q: A1in + Am bytes differ from used bytes")
        if self._in.keys() & self._main.keys() or self._out.keys() & (
            self._in.keys() | self._main.keys()
        ):
            raise PolicyInvariantError("2q: a key is on two queues")
