"""Which node owns a cache key: weighted rendezvous (highest-random-weight) hashing.

Every node computes the same answer from the same member list, with no coordination: each
member scores the key, the highest score owns it, and the rest of the ranking is the order
to fall back in when the owner is down. Adding or removing one member moves only the keys
it wins or owned (1/N of them), and marking a member down moves nothing: ownership is a
function of membership alone, so it stays put for the whole of an epoch while the member
list is unchanged.

Weights follow Resch's logarithmic method (the same one Alluxio and several CDNs use): a
member with weight w scores ``w / -ln(u)`` for a key-and-member hash ``u`` in (0, 1), which
gives each member a share of keys proportional to its weight.

Keys are hashed by their blob id (``index.blob_id_for``, a digest of the cache key), so any
cache key string (a whole object today, a block of one later) has an owner, and the engines'
eviction policies, which only see blob ids, can ask the same question.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..index import blob_id_for


@dataclass(frozen=True)
class Member:
    """One engine of the cluster: its address (also its identity), weight and token."""

    address: str
    weight: float = 1.0
    #: The secret its requests must carry (the shared one for a static list).
    token: str = ""


class Ring:
    """An immutable view of the membership that answers "who owns this key"."""

    def __init__(self, members: Sequence[Member], self_address: str) -> None:
        if not members:
            raise ValueError("a ring needs at least one member")
        addresses = [m.address for m in members]
        if len(set(addresses)) != len(addresses):
            raise ValueError(f"duplicate member addresses: {addresses}")
        if self_address not in addresses:
            raise ValueError(f"this node {self_address!r} is not a member: {addresses}")
        for m in members:
            if not m.weight > 0:
                raise ValueError(f"member {m.address}: weight must be > 0, got {m.weight}")
        self.members: tuple[Member, ...] = tuple(sorted(members, key=lambda m: m.address))
        self.self_address = self_address
        self._salts = [hashlib.blake2b(m.address.encode(), digest_size=8) for m in self.members]
        self._owner_cache: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.members)

    @property
    def fingerprint(self) -> str:
        """A short digest of the member list and weights: equal on every node that agrees."""
        text = ";".join(f"{m.address}={m.weight:.6g}" for m in self.members)
        return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()

    def _scores(self, blob_id: str) -> list[float]:
        data = blob_id.encode()
        scores = []
        for salt, member in zip(self._salts, self.members, strict=True):
            h = salt.copy()
            h.update(data)
            # 53 bits of the hash as a float strictly inside (0, 1).
            u = ((int.from_bytes(h.digest(), "big") >> 11) + 0.5) / float(1 << 53)
            scores.append(member.weight / -math.log(u))
        return scores

    def ranking(self, blob_id: str) -> list[Member]:
        """Every member, the owner of ``blob_id`` first, then the order to fall back in."""
        scores = self._scores(blob_id)
        order = sorted(range(len(self.members)), key=lambda i: scores[i], reverse=True)
        return [self.members[i] for i in order]

    def owner(self, blob_id: str) -> Member:
        i = self._owner_cache.get(blob_id)
        if i is None:
            scores = self._scores(blob_id)
            i = max(range(len(scores)), key=scores.__getitem__)
            if len(self._owner_cache) > 1 << 20:  # bounded: policies ask per eviction
                self._owner_cache.clear()
            self._owner_cache[blob_id] = i
        return self.members[i]

    def owns(self, blob_id: str) -> bool:
        """Whether this node owns ``blob_id``."""
        return self.owner(blob_id).address == self.self_address

    def owner_of_key(self, key: str) -> Member:
        """The owner of a cache key (any string: an object's URL, a block's key)."""
        return self.owner(blob_id_for(key))

    def index_of(self, address: str) -> int:
        """A member's position in the sorted list (its metrics slot); -1 if not a member."""
        for i, m in enumerate(self.members):
            if m.address == address:
                return i
        return -1
