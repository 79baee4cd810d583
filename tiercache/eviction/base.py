"""The one interface every eviction algorithm implements.

An algorithm is pure, in-memory bookkeeping: it knows which keys are resident in one tier and
how many bytes they take, and decides what leaves when room is needed. It never touches data.
The engine and ``tiercache simulate`` drive the very same objects, so a simulated trace
predicts what the cache does.

Driving protocol (what :meth:`EvictionPolicy.request` does for the simulator, and what the
engine does around a real fetch)::

    hit = policy.record(key, size)          # every access, hit or miss
    if not hit and policy.admit(key, size):
        evicted = policy.insert(key, size)  # the policy drops victims to make room

Algorithms are byte-weighted: ``capacity`` and ``size`` are bytes. An object larger than the
whole capacity is never admitted.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, ClassVar

Key = Hashable


class PolicyInvariantError(AssertionError):
    """Raised by :meth:`EvictionPolicy.check` when bookkeeping went wrong (a bug, never input)."""


class EvictionPolicy(ABC):
    """Byte-weighted eviction algorithm for one tier.

    Subclasses implement :meth:`record`, :meth:`insert`, :meth:`remove` and
    :meth:`__contains__`, keep ``self.used`` equal to the sum of resident sizes, and may
    override :meth:`admit` (default: admit anything that fits), :meth:`hint` (future accesses,
    ignored by default) and :meth:`check` (extend with their own invariants).
    """

    #: Registry name, e.g. ``"lru"``; also what config files and ``simulate`` accept.
    name: ClassVar[str] = ""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0 bytes, got {capacity}")
        self.capacity = int(capacity)
        self.used = 0

    # -- the three calls the engine and the simulator make -----------------------------------
    @abstractmethod
    def record(self, key: Key, size: int) -> bool:
        """Record one access of ``key``; return True if it was resident (a hit).

        A miss is only recorded (frequency sketches, ghost lists); it does not insert.
        """

    def admit(self, key: Key, size: int) -> bool:
        """Whether a missed ``key`` should be inserted. Default: whenever it can fit at all."""
        return size <= self.capacity

    def admit_ahead(self, key: Key, size: int) -> bool:
        """Whether a key fetched ahead of its read (prefetch) should be inserted now.

        Default: as :meth:`admit`. A clairvoyant policy judges by the use after the upcoming
        read, as it would when that read happens: storing a key that is read once only
        evicts one that is needed later.
        """
        return self.admit(key, size)

    @abstractmethod
    def insert(self, key: Key, size: int) -> list[Key]:
        """Make ``key`` resident, evicting as needed; return the evicted keys in eviction order.

        Inserting a resident key updates its size. The result never holds ``key`` itself unless
        the algorithm decided the new key is its own victim.
        """

    # -- bookkeeping the engine needs ----------------------------------------------------------
    @abstractmethod
    def remove(self, key: Key) -> None:
        """Forget a resident key (invalidated, promoted away, deleted). Unknown keys are ignored."""

    @abstractmethod
    def __contains__(self, key: object) -> bool: ...

    @abstractmethod
    def __len__(self) -> int: ...

    def hint(self, upcoming: Sequence[Key]) -> None:  # noqa: B027 - optional hook
        """Future accesses in order (the sampler's plan). Only clairvoyant algorithms use it."""

    def resident(self) -> Iterable[Key]:
        """Resident keys, in no promised order (used by ``verify`` and tests)."""
        raise NotImplementedError

    # -- the simulator's convenience -------------------------------------------------------------
    def request(self, key: Key, size: int) -> bool:
        """One simulated request: record, and on a miss admit and insert. Returns hit."""
        hit = self.record(key, size)
        if not hit and self.admit(key, size):
            self.insert(key, size)
        return hit

    def check(self) -> None:
        """Assert the invariants every algorithm keeps; subclasses add their own."""
        if self.used > self.capacity:
            raise PolicyInvariantError(
                f"{self.name}: used {self.used} bytes exceeds capacity {self.capacity}"
            )
        if self.used < 0:
            raise PolicyInvariantError(f"{self.name}: used bytes went negative ({self.used})")

    def params(self) -> dict[str, Any]:
        """The tunable parameters in force, for reports."""
        return {}


class SizedPolicy(EvictionPolicy):
    """An algorithm whose residents are the keys of ``self._sizes`` (key -> bytes).

    Most algorithms keep exactly that table beside their own ordering structures; this
    class holds the bookkeeping they would otherwise each repeat. Subclasses whose
    ``remove`` must also update their own structures override it.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._sizes: dict[Key, int] = {}

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
            raise PolicyInvariantError(f"{self.name}: resident sizes do not sum to used bytes")
