"""Copies of other nodes' keys: kept while there is room, always the first to go.

In a pooled cache every node owns a share of the keys; a node also reads keys other nodes
own, and may keep what it fetched from the owner in its admission tier so the readers of
that shard (several DataLoader workers, several ranks) find it locally. Those copies are
replicas: the owner still has the key, so losing one costs a peer transfer, while losing
an owned key costs an origin GET for every node that wants it. So whatever eviction policy
the tier runs only ever sees owned keys, and replicas live beside it in the room the owned
keys leave, oldest dropped first whenever an owned key needs space.

The wrapper presents the one :class:`~tiercache.eviction.base.EvictionPolicy` interface the
engine already drives, so the engine's placement code does not change.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..eviction.base import EvictionPolicy, Key, PolicyInvariantError


class ReplicaFirst(EvictionPolicy):
    """``inner`` decides among owned keys; replicas fill the rest and are evicted first.

    ``is_replica(key)``: whether another node owns the key now. ``keep``: whether this tier
    holds replicas at all (only the admission tier does: a replica demoted to a slower tier
    would cost a disk write to save a cheap peer read).
    """

    name = "replica-first"

    def __init__(
        self, inner: EvictionPolicy, is_replica: Callable[[str], bool], *, keep: bool
    ) -> None:
        super().__init__(inner.capacity)
        self.inner = inner
        self.is_replica = is_replica
        self.keep = keep
        self._replicas: OrderedDict[Key, int] = OrderedDict()
        self._replica_bytes = 0

    # -- capacity and totals -------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self._capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        # The engine shrinks the budget to the disk's free space; the inner policy gets what
        # the replicas leave (they are dropped for owned keys as needed, in insert).
        self._capacity = int(value)
        if hasattr(self, "inner"):
            self._sync()

    @property
    def used(self) -> int:
        return self.inner.used + self._replica_bytes

    @used.setter
    def used(self, value: int) -> None:
        pass  # derived; the base class initialises it

    @property
    def replica_bytes(self) -> int:
        return self._replica_bytes

    def _sync(self) -> None:
        self.inner.capacity = max(0, self._capacity - self._replica_bytes)

    def _drop_replicas(self, room: int) -> list[Key]:
        """Evict replicas, oldest first, until ``room`` bytes are free (or none are left)."""
        victims: list[Key] = []
        while self._replicas and self._capacity - self.used < room:
            key, size = self._replicas.popitem(last=False)
            self._replica_bytes -= size
            victims.append(key)
        self._sync()
        return victims

    # -- the engine's calls ----------------------------------------------------------------------
    def record(self, key: Key, size: int) -> bool:
        # The inner policy sees every access, so a clairvoyant one keeps its clock on the plan.
        hit = self.inner.record(key, size)
        if key in self._replicas:
            self._replicas.move_to_end(key)
            return True
        return hit

    def admit(self, key: Key, size: int) -> bool:
        if self._replica(key):
            return self.keep and size <= self._capacity - self.inner.used
        return self._owned_admit(self.inner.admit, key, size)

    def admit_ahead(self, key: Key, size: int) -> bool:
        if self._replica(key):
            return self.keep and size <= self._capacity - self.inner.used
        return self._owned_admit(self.inner.admit_ahead, key, size)

    def _owned_admit(self, ask: Callable[[Key, int], bool], key: Key, size: int) -> bool:
        # Judged as if no replica were there: every one of them would make way.
        self.inner.capacity = self._capacity
        try:
            return ask(key, size)
        finally:
            self._sync()

    def insert(self, key: Key, size: int) -> list[Key]:
        if key in self._replicas:  # a resident replica again (a new size): refresh it
            self.remove(key)
        if self._replica(key) and key not in self.inner:
            if not self.keep or size > self._capacity - self.inner.used:
                return []
            victims = self._drop_replicas(size)
            self._replicas[key] = size
            self._replica_bytes += size
            self._sync()
            return victims
        old = self._owned_size(key)
        victims = self._drop_replicas(size - old)
        victims.extend(self.inner.insert(key, size))
        self._sync()
        return victims

    def _owned_size(self, key: Key) -> int:
        if key not in self.inner:
            return 0
        sizes = getattr(self.inner, "_sizes", None)
        return int(sizes.get(key, 0)) if isinstance(sizes, dict) else 0

    def _replica(self, key: Key) -> bool:
        return isinstance(key, str) and self.is_replica(key)

    def remove(self, key: Key) -> None:
        size = self._replicas.pop(key, None)
        if size is not None:
            self._replica_bytes -= size
        else:
            self.inner.remove(key)
        self._sync()

    def __contains__(self, key: object) -> bool:
        return key in self._replicas or key in self.inner

    def __len__(self) -> int:
        return len(self._replicas) + len(self.inner)

    def hint(self, upcoming: Sequence[Key]) -> None:
        self.inner.hint(upcoming)

    def resident(self) -> Iterable[Key]:
        return [*self._replicas, *self.inner.resident()]

    def replicas(self) -> list[Key]:
        return list(self._replicas)

    def check(self) -> None:
        self.inner.check()
        if sum(self._replicas.values()) != self._replica_bytes:
            raise PolicyInvariantError("replica-first: replica sizes do not sum to their bytes")
        if self.used > self._capacity:
            raise PolicyInvariantError(
                f"replica-first: used {self.used} bytes exceeds capacity {self._capacity}"
            )

    def params(self) -> dict[str, Any]:
        return {"inner": self.inner.name, **self.inner.params(), "keep_replicas": self.keep}
