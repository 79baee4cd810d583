"""The node's plan: every local reader's upcoming reads, merged into one order.

A node runs several readers at once: ``torchrun --nproc-per-node=8`` ranks, each hinting
its own sampler's order, plus evaluation jobs and tools. Each hint describes one *stream*
(a process, and a label for processes that read several datasets). A new hint replaces its
own stream only, so the node plans for every rank, not for whichever hinted last.

Each stream keeps its own position: reads anywhere on the node (the ranks' DataLoader
workers, which are other processes) consume the stream's next planned occurrence of the key
when it lies within ``window`` positions of the stream's cursor, and the cursor moves past
every consumed position. The merged order interleaves the streams position by position from
their cursors (ranks of one job move in lockstep, one batch per step), which is the order
in which the node will need the keys. A stream that has been read to its end, or whose
process has died, stops counting.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .index import blob_id_for

#: (process id, label): who hinted. Process id 0: unknown (another pid namespace).
StreamId = tuple[int, str]


@dataclass(frozen=True)
class PlannedRead:
    """One upcoming read: the origin to fetch it from, its path there and its cache key."""

    origin: Any  # tiercache.origin.Origin
    path: str
    key: str
    blob_id: str


@dataclass
class _Stream:
    reads: list[PlannedRead]
    #: blob id -> positions in ``reads`` not yet consumed, ascending
    positions: dict[str, deque[int]] = field(default_factory=dict)
    cursor: int = 0
    #: positions consumed ahead of the cursor
    ahead: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        for i, read in enumerate(self.reads):
            self.positions.setdefault(read.blob_id, deque()).append(i)

    def consume(self, blob_id: str, window: int) -> bool:
        """A read of ``blob_id`` happened: consume its next planned position if it is due
        (within ``window`` of the cursor). Returns whether it was."""
        times = self.positions.get(blob_id)
        if not times:
            return False
        while times and times[0] < self.cursor:
            times.popleft()
        if not times or times[0] >= self.cursor + window:
            return False
        self.ahead.add(times.popleft())
        while self.cursor in self.ahead:
            self.ahead.discard(self.cursor)
            self.cursor += 1
        return True

    @property
    def finished(self) -> bool:
        return self.cursor >= len(self.reads)

    def remaining(self) -> list[PlannedRead]:
        ahead = self.ahead
        return [r for i, r in enumerate(self.reads[self.cursor :], self.cursor) if i not in ahead]


class NodePlan:
    """The merged plan of every stream hinting this node's engine. Thread-safe."""

    def __init__(self, window: int = 64) -> None:
        self.window = window
        self._streams: dict[StreamId, _Stream] = {}
        self._lock = threading.Lock()

    def update(self, stream: StreamId, reads: list[PlannedRead]) -> list[PlannedRead]:
        """Replace ``stream``'s plan; returns the node's merged plan."""
        new = _Stream(reads)  # built before taking the lock: O(plan)
        with self._lock:
            if reads:
                self._streams[stream] = new
            else:
                self._streams.pop(stream, None)
            return self._merged()

    def consumed(self, blob_id: str) -> None:
        """A read of ``blob_id`` happened somewhere on the node."""
        with self._lock:
            finished = [
                sid
                for sid, s in self._streams.items()
                if s.consume(blob_id, self.window) and s.finished
            ]
            for sid in finished:
                del self._streams[sid]

    def drop(self, alive: Callable[[int], bool]) -> list[PlannedRead] | None:
        """Forget streams whose process is gone; returns the new merged plan if any were."""
        with self._lock:
            dead = [sid for sid in self._streams if sid[0] and not alive(sid[0])]
            for sid in dead:
                del self._streams[sid]
            return self._merged() if dead else None

    def streams(self) -> dict[StreamId, tuple[int, int]]:
        """Per stream: (cursor, planned reads), for stats and tests."""
        with self._lock:
            return {sid: (s.cursor, len(s.reads)) for sid, s in self._streams.items()}

    def _merged(self) -> list[PlannedRead]:
        """Position by position across the streams, from each stream's cursor."""
        rests = [s.remaining() for s in self._streams.values()]
        if len(rests) == 1:
            return rests[0]
        merged: list[PlannedRead] = []
        for i in range(max((len(r) for r in rests), default=0)):
            merged.extend(r[i] for r in rests if i < len(r))
        return merged


def planned_reads(origin: Any, paths: list[str]) -> list[PlannedRead]:
    """``paths`` of ``origin`` as planned reads (computes each key's blob id once)."""
    reads = []
    for path in paths:
        key = origin.key(path)
        reads.append(PlannedRead(origin, path, key, blob_id_for(key)))
    return reads
