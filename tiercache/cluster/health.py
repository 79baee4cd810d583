"""Which peers are up: a peer that fails is skipped for a back-off period, then tried again.

Marking a peer down never changes who owns what (see ``ring.py``): reads of its keys go to
the next owner in rendezvous order, or to the origin, until the back-off ends and the next
request to it, which doubles as the probe, succeeds. A node that restarts is therefore back
in use within one back-off, with whatever its tiers still hold.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable


class Health:
    """Up/down state of every peer, with exponential back-off and jitter."""

    def __init__(self, first: float, longest: float, on_change: Callable[[], None]) -> None:
        self.first = first
        self.longest = longest
        self._down_until: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._lock = threading.Lock()
        self._on_change = on_change

    def usable(self, address: str) -> bool:
        """Whether a request may be sent to ``address`` now (up, or its back-off is over)."""
        until = self._down_until.get(address)
        return until is None or time.monotonic() >= until

    def is_up(self, address: str) -> bool:
        """Whether ``address`` counts as up (for ``peers_up``): not marked down."""
        return address not in self._down_until

    def failed(self, address: str) -> None:
        """``address`` did not answer: down for the next back-off period."""
        with self._lock:
            n = self._failures.get(address, 0)
            self._failures[address] = n + 1
            delay = min(self.longest, self.first * 2**n) * (0.75 + 0.5 * random.random())
            changed = address not in self._down_until
            self._down_until[address] = time.monotonic() + delay
        if changed:
            self._on_change()

    def succeeded(self, address: str) -> None:
        if address not in self._down_until and address not in self._failures:
            return
        with self._lock:
            changed = self._down_until.pop(address, None) is not None
            self._failures.pop(address, None)
        if changed:
            self._on_change()

    def down(self) -> set[str]:
        return set(self._down_until)
