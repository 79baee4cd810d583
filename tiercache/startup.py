"""What a new engine does with the cache it inherits, in the background.

A cache can hold millions of entries. Loading, sorting and replaying all of them, and
listing every blob file, before serving anything took minutes at that size, while clients
gave up waiting. Now the engine serves at once and this runs beside it:

1. **Replay**: the index is scanned in short read transactions, entries sorted oldest access
   first, and fed to the tiers' policies in batches under the engine lock, so recency-based
   policies resume in the order they had. Until an entry is replayed its bytes count
   against its tier's capacity as *unreplayed* (the policy's capacity is lowered by them),
   so admissions meanwhile never overfill a tier; replayed entries are the oldest, so
   admissions that need room evict those, as the policy would have. A tier whose capacity
   shrank since the last run demotes (or drops) what no longer fits.
2. **Reconcile**: per blob-id prefix (256 small directories), the index's entries are
   compared with the files and small-object keys present. An entry whose blob is gone is
   dropped (readers would refetch it anyway); a blob no entry points at (a killed writer's,
   a demotion that never committed) is deleted, after a re-check under the engine lock,
   since admissions publish a blob just before they commit its entry. Half-written
   temporaries are swept first.
"""

from __future__ import annotations

import contextlib
import logging
import time
from array import array
from typing import TYPE_CHECKING

from .index import Placement
from .tiers.store import BlobMeta

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("tiercache.startup")

_SCAN_CHUNK = 20_000
_REPLAY_BATCH = 5_000


def start_up(engine: Engine) -> dict[str, int]:
    """Replay and reconcile; returns what was found and fixed."""
    started = time.monotonic()
    report = {"orphan_blobs": 0, "dangling_entries": 0, "temporaries": 0, "evicted": 0}
    for store in engine.stores:
        report["temporaries"] += store.sweep_temporaries()
    replay(engine, report)
    for prefix in range(256):
        if engine._stop.is_set():
            break
        reconcile_prefix(engine, f"{prefix:02x}", report)
    level = logging.INFO if any(report.values()) else logging.DEBUG
    log.log(level, "start-up done in %.2f s: %s", time.monotonic() - started, report)
    return report


def replay(engine: Engine, report: dict[str, int]) -> None:
    """Feed every entry to its tier's policy, oldest access first."""
    ids: list[str] = []
    tiers = array("B")
    sizes = array("q")
    last = array("d")
    after = b""
    while True:
        chunk = engine.index.placements(after, _SCAN_CHUNK)
        if not chunk:
            break
        for p in chunk:
            ids.append(p.blob_id)
            tiers.append(min(p.tier, 255))
            sizes.append(p.stored_size)
            last.append(p.last_access)
        after = chunk[-1].blob_id.encode()
    order = sorted(range(len(ids)), key=last.__getitem__)
    del last
    ntiers = len(engine.stores)
    for start in range(0, len(order), _REPLAY_BATCH):
        batch = order[start : start + _REPLAY_BATCH]
        with engine._lock:
            if engine._replay_cancelled or engine._stop.is_set():
                return  # a full resync from the index took over, or the engine stopped
            # Where each entry is now: it may have been dropped or moved since the scan.
            now = engine.index.tiers_of([ids[i] for i in batch])
            doomed = []
            for i, tier_now in zip(batch, now, strict=True):
                tier, size, blob_id = tiers[i], sizes[i], ids[i]
                if tier_now is None or tier_now != tier:
                    if tier < ntiers:  # dropped or moved since the scan
                        engine._unreplayed[tier] -= size
                        engine.policies[tier].capacity += size
                    continue
                if tier >= ntiers:
                    doomed.append((blob_id, tier))
                    continue
                engine._unreplayed[tier] -= size
                if engine._excess[tier] > 0:  # over capacity: the oldest move down
                    engine._excess[tier] -= size
                    doomed.append((blob_id, tier))
                    continue
                policy = engine.policies[tier]
                policy.capacity += size
                victims = [str(v) for v in policy.insert(blob_id, size)]
                if blob_id not in policy:
                    victims.append(blob_id)
                doomed.extend((v, tier) for v in victims)
            if doomed:
                _settle_doomed(engine, doomed, report)
    with engine._lock:
        engine._unreplayed = [0] * ntiers
        for policy, tier_config in zip(engine.policies, engine.config.tiers, strict=True):
            policy.capacity = tier_config.capacity


def _settle_doomed(engine: Engine, doomed: list[tuple[str, int]], report: dict[str, int]) -> None:
    """Entries of tiers no longer configured go; victims of a shrunk tier move down."""
    with engine.index.write() as w:
        deleted = []
        for blob_id, tier in doomed:
            if tier >= len(engine.stores):
                if w.delete(blob_id) is not None:
                    report["dangling_entries"] += 1
                continue
            moved = engine._evict(w, tier, [blob_id])
            deleted.extend(moved)
            report["evicted"] += len(moved)
    engine._delete_blobs(deleted)


def reconcile_prefix(engine: Engine, prefix: str, report: dict[str, int]) -> None:
    """Compare the index's entries whose blob id starts with ``prefix`` with the blobs
    present in every tier; fix what disagrees."""
    indexed: dict[str, Placement] = {}
    after = prefix.encode()
    while True:
        chunk = [p for p in engine.index.placements(after, _SCAN_CHUNK) if p.blob_id[:2] == prefix]
        for p in chunk:
            indexed[p.blob_id] = p
        if len(chunk) < _SCAN_CHUNK:
            break
        after = chunk[-1].blob_id.encode()
    suspects: list[tuple[int, str, bool]] = []  # (tier, blob id, small): look again, locked
    for tier, store in enumerate(engine.stores):
        files = store.blob_names(prefix)
        small = store.small_ids(prefix)
        for blob_id, p in indexed.items():
            if p.tier == tier and blob_id not in (small if p.small else files):
                suspects.append((tier, blob_id, p.small))
        for blob_id in files:
            found = indexed.get(blob_id)
            if found is None or found.tier != tier or found.small:
                suspects.append((tier, blob_id, False))
        for blob_id in small:
            found = indexed.get(blob_id)
            if found is None or found.tier != tier or not found.small:
                suspects.append((tier, blob_id, True))
    if suspects:
        with engine._lock:
            _fix(engine, suspects, report)


def _fix(engine: Engine, suspects: list[tuple[int, str, bool]], report: dict[str, int]) -> None:
    """Under the engine lock: admissions and moves publish and commit under it, so what is
    seen now is consistent."""
    dangling = []
    for tier, blob_id, small in suspects:
        store = engine.stores[tier]
        entry = engine.index.get_by_blob_id(blob_id)
        present = store.has_blob(blob_id, small)
        if entry is not None and entry.tier == tier and entry.blob.small == small:
            if not present:
                dangling.append(entry)
        elif present:
            with contextlib.suppress(OSError):
                store.delete(blob_id, BlobMeta(0, 0, False, small))
                report["orphan_blobs"] += 1
    if dangling:
        with engine.index.write() as w:
            for entry in dangling:
                w.delete(entry.blob_id)
        for entry in dangling:
            engine.policies[entry.tier].remove(entry.blob_id)
        report["dangling_entries"] += len(dangling)
