"""The engine: the one place per node that decides what is stored where.

Exactly one process per cache directory runs the engine (it holds ``engine.lock``); the
others send it misses, hints and access records (see ``ipc.py``) and read hits straight from
the tiers. Keeping all placement in one process makes the hard guarantees simple: capacity
is counted in one place, N concurrent misses of one key become one origin read (an in-memory
single-flight table), and policy state is one object per tier — the same objects
``tiercache simulate`` drives.

Placement rules:

* a miss is admitted into the admission tier (the fastest by default) if its policy agrees;
* a key evicted from a tier is demoted into the next slower tier, and dropped from the last;
* a key hit ``promotion.hits`` times in a slower tier moves up one tier (0: never);
* before writing, a tier's budget shrinks to what its disk can hold above ``min_free``;
  a tier whose disk is full is skipped, never allowed to fail the reader.

Order of writes, so that a SIGKILL at any instant leaves a consistent cache: blob written
under a temporary name, fsynced, renamed; then the index commit that points at it; then old
blobs are deleted. At start, orphans (blobs no entry points at, temporaries) and dangling
entries (entries whose blob is gone) are reconciled.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import lmdb

from .bounded import Bounded
from .config import Config
from .counters import Counters
from .eviction import EvictionPolicy, Key, policy_from_spec
from .index import Entry, Index, IndexWriter, blob_id_for
from .mover import Move, Mover
from .origin import Origin, OriginError, object_version
from .plan import NodePlan, PlannedRead, StreamId, planned_reads
from .prefetch import Prefetcher
from .service import pid_alive
from .startup import start_up
from .tiers.store import BlobMeta, Buffer, CorruptBlobError, Staged, TierStore
from .unstored import Held, Unstored
from .verified import VerifiedTable
from .write.staging import Staging
from .write.uploader import Uploader

if TYPE_CHECKING:
    from .cluster import Cluster

log = logging.getLogger("tiercache.engine")
T = TypeVar("T")


@dataclass
class FetchResult:
    """What a miss produced: the entry it was stored as (None if not admitted) and the bytes."""

    entry: Entry | None
    data: Buffer
    version: str = ""  # the origin version of ``data``


class Engine:
    """Placement, promotion, demotion, eviction and single-flight fetch for one cache."""

    def __init__(
        self,
        config: Config,
        index: Index,
        stores: list[TierStore],
        counters: Counters,
        verified: VerifiedTable,
        staging: Staging | None = None,
    ) -> None:
        self.config = config
        self.verified = verified
        self.index = index
        self.stores = stores
        self.counters = counters
        self.policies: list[EvictionPolicy] = [
            policy_from_spec(t.eviction, t.capacity) for t in config.tiers
        ]
        self.admission_tier = config.tier_names.index(config.admission.tier)
        self._lock = threading.RLock()  # policies, index writes, promotion bookkeeping
        self._inflight: dict[str, Future[FetchResult]] = {}
        self._validating: dict[str, Future[bool]] = {}
        self._inflight_lock = threading.Lock()
        self._staging = [0] * len(config.tiers)  # bytes being written into each tier
        self._pool = ThreadPoolExecutor(
            max_workers=max(config.origin.concurrency, config.prefetch.concurrency),
            thread_name_prefix="tiercache-fetch",
        )
        #: Hits counted towards promotion, for the most recently hit keys of slower tiers.
        self._promotion_hits: Bounded[str, int] = Bounded(100_000)
        #: blob id -> (last access, hits since the last flush), persisted in batches
        self._touched: dict[str, tuple[float, int]] = {}
        self._promote_queue: deque[str] = deque()
        #: Blobs to delete once the index commit in progress has landed (never before:
        #: a failed or killed commit must leave every committed entry's blob in place).
        self._pending: list[tuple[int, Entry]] = []
        self._prefetch = Prefetcher(self)
        self._plan = NodePlan()
        self._mover = Mover(self)
        # Room for what prefetch holds ahead plus as much again for readers of recent misses.
        self._unstored = Unstored(2 * self._prefetch.budget)
        self._stop = threading.Event()
        #: Peers this node pools its tiers with (``[cluster]``); wraps the policies, so it
        #: comes before the rebuild replays the index into them.
        self.cluster = attach_cluster(self)
        #: What this engine found and fixed when it started (shown by ``verify``).
        self.reconciled_at_start: dict[str, int] = {}
        self._unreplayed = [0] * len(config.tiers)
        self._hold_unreplayed()
        self._started = threading.Event()
        threading.Thread(target=self._start_up, name="tiercache-startup", daemon=True).start()
        self._housekeeper = threading.Thread(
            target=self._housekeeping, name="tiercache-housekeeping", daemon=True
        )
        self._housekeeper.start()
        if self.cluster is not None:
            self.cluster.start()
        #: Carries the write tier's journal to the origin (``tiercache.write.uploader``).
        self.uploader = Uploader(self, staging) if staging is not None else None

    # -- start-up -----------------------------------------------------------------------------
    def _start_up(self) -> None:
        try:
            self.reconciled_at_start = start_up(self)
        except Exception:  # the engine serves on; the next start reconciles again
            log.exception("reconciling the cache at start failed")
        finally:
            self._started.set()

    def wait_started(self, timeout: float | None = None) -> bool:
        """Wait until start-up (policy replay and reconciliation) is done."""
        return self._started.wait(timeout)

    def rebuild(self) -> dict[str, int]:
        """Replay and reconcile now, from scratch (``verify --repair``)."""
        self.wait_started()
        with self._lock:
            self._hold_unreplayed()
            return start_up(self)

    def _hold_unreplayed(self) -> None:
        """Empty the policies; the index's bytes count against each tier as unreplayed
        until the replay has fed every entry back."""
        totals = self.index.totals()
        self._replay_cancelled = False
        self._unreplayed = [totals[t.name]["used_bytes"] for t in self.config.tiers]
        #: Bytes a tier holds beyond its capacity (it shrank, or the last engine stopped
        #: with demotions queued): the replay moves that many of its oldest entries down.
        self._excess = [
            max(0, held - t.capacity)
            for held, t in zip(self._unreplayed, self.config.tiers, strict=True)
        ]
        for policy, tier, held in zip(
            self.policies, self.config.tiers, self._unreplayed, strict=True
        ):
            for key in list(policy.resident()):
                policy.remove(key)
            policy.capacity = max(0, tier.capacity - held)

    # -- misses ---------------------------------------------------------------------------------
    def fetch(
        self, origin: Origin, path: str, *, prefetch: bool = False, via_peers: bool = True
    ) -> FetchResult:
        """Read ``path`` from the origin once, however many callers ask at the same time.

        With ``[cluster]``, a key another node owns is read from that node instead;
        ``via_peers=False`` (a peer's own request) always reads the origin.
        """
        key = origin.key(path)
        try:
            return self._once(
                self._inflight,
                key,
                lambda: self._fetch_and_place(origin, path, key, prefetch, via_peers),
            )
        finally:
            if not prefetch:
                self._consumed(blob_id_for(key))

    def _once(self, table: dict[str, Future[T]], key: str, work: Callable[[], T]) -> T:
        """Single flight: the first caller for ``key`` runs ``work``; concurrent callers
        wait for its result (or its exception)."""
        with self._inflight_lock:
            future = table.get(key)
            leader = future is None
            if leader:
                future = table[key] = Future()
        assert future is not None
        if not leader:
            self.counters.add("singleflight_waits")
            return future.result()
        try:
            result = work()
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            with self._inflight_lock:
                del table[key]

    def validate(self, origin: Origin, path: str) -> bool:
        """Whether the cached copy of ``path`` still matches the origin, asked once for the
        whole node: one HEAD however many processes find the entry due, and the time is
        recorded in the index (``fetched_at``), so every process trusts it for the TTL.
        A changed object is dropped (the caller refetches); an unreachable origin, or one
        that cannot be asked right now, leaves the cached copy in use."""
        key = origin.key(path)
        return self._once(self._validating, key, lambda: self._validate(origin, path, key))

    def _validate(self, origin: Origin, path: str, key: str) -> bool:
        entry = self.index.get(key)
        if entry is None:
            return False
        if 0 <= time.time() - entry.fetched_at < self.config.validation.ttl_seconds:
            return True  # validated (or refetched) by another request meanwhile
        asked_at = time.time()
        try:
            current: str | None = object_version(origin.info(path, refresh=True))
        except OriginError:
            return True
        except FileNotFoundError:
            current = None
        if current != entry.version:
            log.info("%s changed at the origin (%s -> %s); refetching", key, entry.version, current)
            self.counters.add("stale_refetches")
            self.invalidate(key)
            return False
        try:
            with self.index.write() as w:
                now = w.get(entry.blob_id)
                if now is not None and now.version == entry.version:
                    now.fetched_at = asked_at
                    w.touch(now)
        except Exception as exc:  # a full index: the next reader asks again
            if not disk_full(exc):
                raise
        return True

    def _fetch_and_place(
        self, origin: Origin, path: str, key: str, prefetch: bool, via_peers: bool = True
    ) -> FetchResult:
        current = self.index.get(key)
        if current is not None:
            # Someone stored it while we queued (another engine thread, a prefetch).
            with contextlib.suppress(FileNotFoundError, CorruptBlobError):
                data = self.stores[current.tier].get(current.blob_id, current.blob)
                return FetchResult(current, data, current.version)
        held = self._unstored.get(key)
        if held is not None:
            # Fetched moments ago (by a prefetch, or for another reader) but no tier took it:
            # serve it again rather than read the origin again. A reader's access may still
            # earn it a place now.
            if prefetch:
                return FetchResult(None, held.data, held.version)
        else:
            if not prefetch and self._unstored.regretted(key):
                self._prefetch.crowded()  # fetched again: the hold had let it go for room
            held = self._fetch_held(origin, path, key, via_peers)
        entry = self.admit(key, held, prefetch=prefetch)
        if entry is None:
            # Held without its staged file: admit discarded that (a later admit stages anew).
            self._unstored.put(key, held._replace(staged=None), read=not prefetch)
        else:
            self._unstored.drop(key)
        return FetchResult(entry, held.data, held.version)

    def _fetch_held(self, origin: Origin, path: str, key: str, via_peers: bool) -> Held:
        """The object's bytes from the key's owner (``[cluster]``), or the origin."""
        if self.cluster is not None and via_peers:
            return self.cluster.fetch(origin, path, key)
        started = time.time()  # the version was current at some instant after this
        fetched = origin.fetch(path)
        return Held(fetched.data, fetched.version, started, fetched.crc32)

    def admit(self, key: str, held: Held, *, prefetch: bool = False) -> Entry | None:
        """Store fetched bytes by policy; returns the entry, or None if no tier took it.

        A demand miss is an access: every tier's policy records it, so clairvoyant policies
        keep their clock in step with the sampler's plan. A prefetch is not an access; the
        consumer's read of it later is. A tier whose policy declines the key (too big for
        its first queue, not frequent enough) passes it on to the next slower tier.
        """
        blob_id = blob_id_for(key)
        data = held.data
        with self._lock:
            self._drop(blob_id)  # a stale copy in any tier goes first
            if not prefetch:
                for policy in self.policies:
                    policy.record(blob_id, len(data))
        try:
            return self._admit_into_tiers(key, blob_id, held, prefetch)
        finally:
            if held.staged is not None:  # received into a tier that did not keep it
                held.staged.discard()

    def _admit_into_tiers(self, key: str, blob_id: str, held: Held, prefetch: bool) -> Entry | None:
        data = held.data
        for tier in range(self.admission_tier, len(self.stores)):
            store = self.stores[tier]
            pre = held.staged if held.staged_tier == tier else None
            stored, compressed = (data, False) if pre is not None else store.encode(data)
            self._mover.wait_room(tier)  # back-pressure: the tier's demotions are behind
            with self._lock:
                policy = self.policies[tier]
                wanted = policy.admit_ahead if prefetch else policy.admit
                if not wanted(blob_id, len(stored)):
                    continue
                self._staging[tier] += len(stored)
            # The slow part (checksum, write, fsync) runs unlocked, so admissions from
            # concurrent fetches overlap; their bytes are reserved in ``_staging``.
            try:
                # The origin's check already hashed these bytes: no second pass over them.
                known = None if compressed else held.crc32
                staged: Staged | None = pre or store.stage(
                    blob_id, stored, compressed, len(data), checksum=known
                )
            except OSError as exc:
                if not disk_full(exc):
                    with self._lock:
                        self._staging[tier] -= len(stored)
                    raise
                staged = None
            with self._lock:
                self._staging[tier] -= len(stored)
                entry = None
                if staged is not None and not self._shadowed(key):
                    entry = self._place(tier, key, staged, held)
                else:
                    self.counters.add("bypass_full", tier=tier)
            if entry is not None:
                self.counters.add("admissions", tier=tier)
                return entry
            if staged is not None and staged is not pre:
                staged.discard()
        self.counters.add("not_admitted")
        return None

    def _place(
        self,
        tier: int,
        key: str,
        staged: Staged,
        held: Held,
        logical_size: int | None = None,
    ) -> Entry | None:
        """Publish a staged blob into ``tier``, evicting (demoting) what must make room.

        Returns None when the tier cannot take it (disk full, policy changed its mind); the
        caller discards the staged bytes and tries the next tier. ``logical_size``: the
        object's size when its bytes are not in ``held`` (an adopted file).
        """
        store, policy = self.stores[tier], self.policies[tier]
        blob_id, size = staged.blob_id, staged.meta.stored_size
        if not self._fit_to_disk(tier, size, written=0 if staged.tmp is None else size):
            self.counters.add("bypass_full", tier=tier)
            return None
        victims = policy.insert(blob_id, size)
        if blob_id not in policy:
            self._settle(tier, victims)
            return None
        try:
            meta = store.publish(staged)
        except OSError as exc:
            policy.remove(blob_id)
            self._settle(tier, victims)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self.counters.add("bypass_full", tier=tier)
                log.warning("tier %s is out of disk space; skipping it", store.config.name)
                return None
            if isinstance(exc, FileNotFoundError):  # the tier was wiped meanwhile
                return None
            raise
        entry = Entry(
            key, tier, len(held.data) if logical_size is None else logical_size, meta, held.version,
            time.time(), 0, blob_id, held.fetched_at,
        )  # fmt: skip
        try:
            with self.index.write() as w:
                w.put(entry)
                deleted = self._evict(w, tier, victims)
        except Exception as exc:
            if not disk_full(exc):
                raise
            self._index_full(exc)
            return None
        self._delete_blobs(deleted + self._take_pending())
        return entry

    def _fit_to_disk(self, tier: int, size: int, written: int = 0) -> bool:
        """Shrink the tier's budget to what its filesystem can hold above ``min_free``;
        whether a blob of ``size`` fits in it (once the policy has evicted enough).

        ``written``: bytes of this blob already on that filesystem (staged), not to be
        counted twice. The policy's capacity only drops below what it holds when an insert
        follows (and evicts down to it); otherwise the tier shrinks at its next insert.
        """
        store, policy = self.stores[tier], self.policies[tier]
        room = store.free_bytes() + written - store.config.min_free
        # Bytes other admissions are still writing are spoken for.
        budget = max(
            0,
            min(
                store.config.capacity - self._staging[tier] - self._unreplayed[tier],
                policy.used + max(0, room),
            ),
        )
        fits = size <= budget
        policy.capacity = budget if fits else max(budget, policy.used)
        return fits

    def _evict(self, w: IndexWriter, tier: int, victims: list[Key]) -> list[tuple[int, Entry]]:
        """Let ``victims`` of ``tier`` go: to the mover, which copies them down to the next
        tier in the background, or, from the last tier, out of the index.

        Returns the (tier, entry) blobs to delete once the index commit has landed.
        """
        to_delete: list[tuple[int, Entry]] = []
        for victim in victims:
            entry = w.get(str(victim))
            if entry is None or entry.tier != tier:
                continue
            # A replica of another node's key is dropped, not copied down: its owner has it.
            replica = self.cluster is not None and self.cluster.is_replica(entry.blob_id)
            if tier + 1 < len(self.stores) and not replica:
                self._mover.demote(entry)  # still served from this tier until it has moved
                continue
            to_delete.append((tier, entry))
            w.delete(entry.blob_id)
            self.counters.add("evictions", tier=tier)
        return to_delete

    def _reserve_move(self, move: Move, size: int) -> bool:
        """Make room for a move before its bytes are written (under the engine lock): the
        destination's policy takes the key now and lets its victims go, so that on a full
        disk their space is freed before the copy needs it. Returns whether it took it."""
        policy = self.policies[move.dst]
        if not self._fit_to_disk(move.dst, size):
            self.counters.add("bypass_full", tier=move.dst)
            return False
        if move.promotion and not policy.admit(move.blob_id, size):
            return False
        self._settle(move.dst, policy.insert(move.blob_id, size))
        if move.blob_id not in policy:
            return False
        self._staging[move.dst] += size
        return True

    def _finish_move(self, move: Move, entry: Entry, staged: Staged | None) -> None:
        """Commit a move the mover has copied (under the engine lock): the index points at
        the new copy and the old one goes. A demotion that could not be made (no room, the
        copy failed, the destination let the key go meanwhile) is an eviction; a promotion
        that could not be made leaves the key where it was."""
        src, dst = move.src, move.dst
        policy = self.policies[dst]
        try:
            with self.index.write() as w:
                now = w.get(move.blob_id)
                unchanged = now is not None and now.tier == src and now.blob == entry.blob
                moved = None
                if unchanged and now and staged is not None and move.blob_id in policy:
                    moved = self._publish_moved(w, now, dst, staged)
                if moved is None:
                    if staged is not None:
                        staged.discard()
                    if now is None or now.tier != dst:
                        policy.remove(move.blob_id)  # reserved by _reserve_move, not used
                if not unchanged or now is None:
                    return  # dropped, refetched or moved while it was being copied
                if moved is not None:
                    self.policies[src].remove(move.blob_id)
                    self._pending.append((src, now))
                    self.counters.add("promotions" if move.promotion else "demotions", tier=src)
                elif not move.promotion:
                    w.delete(move.blob_id)
                    self._pending.append((src, now))
                    self.counters.add("evictions", tier=src)
        except Exception as exc:
            if not disk_full(exc):
                raise
            self._index_full(exc)
            return
        self._delete_blobs(self._take_pending())

    def _publish_moved(
        self, w: IndexWriter, entry: Entry, tier: int, staged: Staged
    ) -> Entry | None:
        try:
            meta = self.stores[tier].publish(staged)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.ENOENT):
                raise
            self.counters.add("bypass_full", tier=tier)
            return None
        moved = Entry(
            entry.key, tier, entry.size, meta, entry.version, entry.last_access, 0, entry.blob_id,
            entry.fetched_at,
        )  # fmt: skip
        w.put(moved)
        return moved

    def _settle(self, tier: int, victims: list[Key]) -> None:
        if victims:
            try:
                with self.index.write() as w:
                    deleted = self._evict(w, tier, victims)
            except Exception as exc:
                if not disk_full(exc):
                    raise
                self._index_full(exc)
                return
            self._delete_blobs(deleted + self._take_pending())

    def _take_pending(self) -> list[tuple[int, Entry]]:
        pending, self._pending = self._pending, []
        return pending

    def _delete_blobs(self, blobs: list[tuple[int, Entry]]) -> None:
        for tier, entry in blobs:
            try:
                self.stores[tier].delete(entry.blob_id, entry.blob)
            except Exception as exc:  # a full small-object store: the next rebuild sweeps it
                if not disk_full(exc):
                    raise
                log.warning("could not delete a blob from tier %s: %s", tier, exc)

    def _index_full(self, exc: BaseException) -> None:
        """An index commit failed for lack of disk space: nothing of it landed.

        The policies have already moved on (admitted, evicted, demoted) and blobs were
        written for entries that do not exist; bring both back to the index as last
        committed, without writing to it. The reader still gets its bytes: the object is
        simply not cached this time.
        """
        log.warning("index commit failed, disk full (%s); not caching this object", exc)
        self._pending.clear()
        self.counters.add("bypass_full", tier=len(self.stores) - 1)
        self._resync_from_index()

    def _resync_from_index(self) -> None:
        """Replay the committed index into fresh policies; delete blob files it does not
        name (written for a commit that failed). Writes nothing to the index."""
        self._replay_cancelled = True  # this replays everything; start-up need not
        self._unreplayed = [0] * len(self.stores)
        entries = sorted(self.index, key=lambda e: e.last_access)
        for tier, policy in enumerate(self.policies):
            policy.capacity = self.config.tiers[tier].capacity
            for key in list(policy.resident()):
                policy.remove(key)
            mine = [e for e in entries if e.tier == tier]
            budget = policy.capacity
            policy.capacity = max(budget, sum(e.blob.stored_size for e in mine))
            for e in mine:
                policy.insert(e.blob_id, e.blob.stored_size)
            policy.capacity = budget
            store = self.stores[tier]
            known = {e.blob_id for e in mine if not e.blob.small}
            for blob_id in store.blob_files().keys() - known:
                store.delete(blob_id, BlobMeta(0, 0, False, False))

    def _recover_wiped(self, tier: int) -> None:
        """A tier's directory was deleted under the cache: its entries point at nothing.
        Make it again and drop them (the origin has them all); readers refetch."""
        store = self.stores[tier]
        with self._lock:
            store.reopen()
            lost = [e for e in self.index if e.tier == tier]
            with self.index.write() as w:
                for entry in lost:
                    w.delete(entry.blob_id)
            for entry in lost:
                self.policies[tier].remove(entry.blob_id)
        self.counters.add("invalidations", len(lost), tier=tier)
        log.warning(
            "tier %s: %s was deleted under the cache; made it again and dropped its %d "
            "entries (they are refetched when read)",
            store.config.name, store.root, len(lost),
        )  # fmt: skip

    def _drop(self, blob_id: str) -> None:
        """Remove a key from every tier and the index (stale or corrupt copy)."""
        with self._lock:
            if self.index.get_by_blob_id(blob_id) is None:
                return  # the usual case on a miss: no write transaction, no fsync
            with self.index.write() as w:
                old = w.delete(blob_id)
        if old is not None:
            self.counters.add("invalidations", tier=old.tier)
            self.policies[old.tier].remove(blob_id)
            self.stores[old.tier].delete(blob_id, old.blob)

    def _shadowed(self, key: str, own: int = 0) -> bool:
        """A write to ``key`` newer than what is being placed is staged on this node: its
        staged copy is what readers get until it is uploaded (``tiercache.write``), and
        an entry must not hide it. Checked under the engine lock, where a writer's
        ``invalidate`` (sent after its journal commit) serialises with placements."""
        return self.uploader is not None and self.uploader.pending_seq(key) not in (None, own)

    def adopt(
        self, key: str, source: Path, size: int, crc32: int, version: str, seq: int = 0
    ) -> Entry | None:
        """A file this node wrote, now verified at the origin: make it an ordinary entry of
        the slowest tier, under that tier's policy (linked there, not copied, when the tier
        stores it as is on the same filesystem). Returns None when the tier declines it
        (or a later write, ``seq`` being this one's, is pending); either way, no older copy
        of ``key`` stays cached."""
        tier = len(self.stores) - 1
        store, blob_id = self.stores[tier], blob_id_for(key)
        self._unstored.drop(key)
        self._mover.wait_room(tier)
        with self._lock:
            self._drop(blob_id)
            if not self.policies[tier].admit(blob_id, size):
                self.counters.add("not_admitted")
                return None
            self._staging[tier] += size
        try:  # the slow part, unlocked: a link, or a copy (compressed tiers, other disks)
            staged = store.stage_from_file(blob_id, source, size, crc32)
        finally:
            with self._lock:
                self._staging[tier] -= size
        held = Held(b"", version, time.time(), crc32)  # the bytes stay on disk
        with self._lock:
            entry = None
            if not self._shadowed(key, seq):
                entry = self._place(tier, key, staged, held, logical_size=size)
        if entry is None:
            staged.discard()
        else:
            self.counters.add("admissions", tier=tier)
        return entry

    def invalidate(self, key: str) -> None:
        """Forget a key (checksum failure, changed at the origin, written or deleted on this
        node); the next read refetches. A large object's record goes too, with its blocks:
        kept, it would serve the old bytes until the next validation."""
        from .blockfetch import fetcher_for

        self._unstored.drop(key)
        self._drop(blob_id_for(key))
        fetcher_for(self).forget(key)

    # -- maintenance ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _settled(self) -> Iterator[None]:
        """The engine lock, held with no move queued or under way (after a few tries, held
        anyway): moves are queued under the lock, so none starts while it is held."""
        for _ in range(10):
            self._mover.drain()
            self._lock.acquire()
            if self._mover.idle():
                break
            self._lock.release()
        else:
            self._lock.acquire()
        try:
            yield
        finally:
            self._lock.release()

    def verify(self, repair: bool = False) -> dict[str, object]:
        """Check every entry's blob (present, right size, right checksum), the per-tier totals,
        files no entry points at, and policy state; with ``repair``, fix what is wrong.

        Repair never loses anything the origin cannot give back: bad entries are dropped
        (the next read refetches them), orphans deleted, totals recomputed.
        """
        problems: list[str] = []
        bad: list[Entry] = []
        sums = {name: {"entries": 0, "used_bytes": 0} for name in self.config.tier_names}
        files_on_disk = {}
        self.wait_started()
        # A consistent picture under the lock (the index, its totals, the files on disk and
        # the policies), taken with no move under way: an entry waiting to be demoted has
        # left its tier's policy but not yet its index entry. A promotion may queue moves
        # between the drain and the lock, so the mover must still be idle once it is held.
        # The slow part, hashing every blob, runs after, unlocked.
        with self._settled():
            entries = list(self.index)
            totals = self.index.totals()
            for entry in entries:
                if entry.tier >= len(self.stores):
                    problems.append(f"{entry.key}: entry points at unknown tier {entry.tier}")
                    bad.append(entry)
                    continue
                t = sums[self.config.tier_names[entry.tier]]
                t["entries"] += 1
                t["used_bytes"] += entry.blob.stored_size
            for name, counted in sums.items():
                if totals[name] != counted:
                    problems.append(f"tier {name}: index totals {totals[name]} != {counted}")
            for tier, store in enumerate(self.stores):
                name = self.config.tier_names[tier]
                on_disk = store.blob_files()
                known = {e.blob_id for e in entries if e.tier == tier and not e.blob.small}
                orphans = on_disk.keys() - known
                if orphans:
                    problems.append(f"tier {name}: {len(orphans)} blob file(s) with no entry")
                files_on_disk[name] = sum(on_disk.values())
                if sums[name]["used_bytes"] > store.config.capacity:
                    problems.append(
                        f"tier {name}: {sums[name]['used_bytes']} bytes used, "
                        f"capacity {store.config.capacity}"
                    )
            try:
                self.check()
            except AssertionError as exc:
                problems.append(f"policy state: {exc}")
        for entry in entries:
            if entry.tier >= len(self.stores):
                continue
            try:
                self.stores[entry.tier].get(entry.blob_id, entry.blob)
            except (FileNotFoundError, CorruptBlobError) as exc:
                now = self.index.get_by_blob_id(entry.blob_id)
                if now is not None and (now.tier, now.blob) == (entry.tier, entry.blob):
                    problems.append(f"{entry.key}: {type(exc).__name__}: {exc}")
                    bad.append(entry)  # not moved or replaced meanwhile: really damaged
        repaired = False
        if repair and problems:
            with self._lock:
                with self.index.write() as w:
                    for entry in bad:
                        w.delete(entry.blob_id)
                    w.recount_totals()
                self.rebuild()
            repaired = True
        return {
            "ok": not problems,
            "entries": len(entries),
            "problems": problems,
            "repaired": repaired,
            "reconciled_at_start": self.reconciled_at_start,
            "tiers": {
                name: {**sums[name], "blob_file_bytes": files_on_disk[name]}
                for name in self.config.tier_names
            },
        }

    def clear(self, tier: str | None = None) -> dict[str, int]:
        """Drop every entry (of one tier, or all); the origin still has everything."""
        with self._lock:
            dropped = {"entries": 0, "bytes": 0}
            names = self.config.tier_names
            targets = {names.index(self.config.tier(tier).name)} if tier else set(range(len(names)))
            victims = [e for e in self.index if e.tier in targets]
            with self.index.write() as w:
                for entry in victims:
                    w.delete(entry.blob_id)
            for entry in victims:
                self.policies[entry.tier].remove(entry.blob_id)
                self.stores[entry.tier].delete(entry.blob_id, entry.blob)
                dropped["entries"] += 1
                dropped["bytes"] += entry.blob.stored_size
            return dropped

    # -- hits -----------------------------------------------------------------------------------
    def record_access(self, blob_id: str, tier: int, size: int) -> None:
        """A hit in ``tier`` happened somewhere on the node: every tier's policy sees it."""
        with self._lock:
            for policy in self.policies:
                policy.record(blob_id, size)
            seen = self._touched.get(blob_id)
            self._touched[blob_id] = (time.time(), seen[1] + 1 if seen else 1)
            if tier > 0 and self.config.promotion.hits and blob_id in self.policies[tier]:
                hits = self._promotion_hits.get(blob_id, 0) + 1
                if hits >= self.config.promotion.hits:
                    self._promotion_hits.pop(blob_id, None)
                    self._promote_queue.append(blob_id)
                else:
                    self._promotion_hits[blob_id] = hits
        self._consumed(blob_id)

    def promote(self, blob_id: str) -> bool:
        """Queue a move of an entry one tier up; returns whether it was queued.

        Promotion is an admission: a full static tier, or MIN knowing that every resident
        is needed sooner, keeps the key where it is (no copying churn). The mover asks the
        upper tier's policy again when the copy is ready."""
        with self._lock:
            entry = self.index.get_by_blob_id(blob_id)
            if entry is None or entry.tier == 0:
                return False
            if not self.policies[entry.tier - 1].admit(blob_id, entry.blob.stored_size):
                return False
        self._mover.promote(entry)
        return True

    # -- hints ------------------------------------------------------------------------------------
    def hint(
        self,
        origin: Origin,
        paths: Sequence[str],
        stream: StreamId | None = None,
        cluster: Sequence[str] | None = None,
    ) -> None:
        """One reader's upcoming reads, in order: merged into the node's plan, which drives
        prefetch and the clairvoyant policies. ``stream`` says whose they are (process id
        and label; default: this process): a new hint replaces that stream's plan only.

        ``cluster``: every node's upcoming reads in the cluster's time order; with
        ``[cluster]`` the stream's plan is its own reads plus the keys this node owns that
        other nodes will ask it for.
        """
        if self.cluster is not None and cluster is not None:
            paths = self.cluster.plan(origin, paths, cluster)
        reads = planned_reads(origin, list(paths))
        self._follow(self._plan.update(stream or (os.getpid(), ""), reads))

    def _follow(self, merged: list[PlannedRead]) -> None:
        """Point the policies and the prefetcher at the node's (new) merged plan."""
        blob_ids = [r.blob_id for r in merged]
        with self._lock:
            for policy in self.policies:
                policy.hint(blob_ids)
        self._prefetch.plan(merged)

    def _consumed(self, blob_id: str) -> None:
        """A read of ``blob_id`` happened on the node: the plan and prefetch move on."""
        self._plan.consumed(blob_id)
        self._prefetch.consumed(blob_id)

    # -- background -------------------------------------------------------------------------------
    def _housekeeping(self) -> None:
        last_flush = last_fold = last_streams = last_purge = time.monotonic()
        verified_ttl = max(t.verify_ttl_seconds for t in self.config.tiers)
        while not self._stop.wait(0.2):
            try:
                while self._promote_queue:
                    self.promote(self._promote_queue.popleft())
                now = time.monotonic()
                if now - last_streams > 2:
                    for tier, store in enumerate(self.stores):
                        if store.wiped():
                            self._recover_wiped(tier)
                    merged = self._plan.drop(pid_alive)  # readers that died stop counting
                    if merged is not None:
                        self._follow(merged)
                    last_streams = now
                if now - last_flush > 5:
                    self._flush_touched()
                    last_flush = now
                if now - last_fold > 30:
                    self.counters.fold_dead()
                    last_fold = now
                if now - last_purge > min(verified_ttl or 600, 600):
                    if verified_ttl:
                        self.verified.purge(verified_ttl)
                    clean_listings(self.config.index_path / "listings")
                    last_purge = now
            except Exception:  # the housekeeper must outlive any one bad entry
                log.exception("engine housekeeping failed; continuing")

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait until the queued moves between tiers are done: then the index, the policies
        and the tiers' files agree exactly (tests, benchmarks, ``verify``)."""
        return self._mover.drain(timeout)

    def _housekeeping_once(self) -> None:
        """Everything the housekeeper does, now (tests, shutdown)."""
        while self._promote_queue:
            self.promote(self._promote_queue.popleft())
        self.wait_idle()
        self._flush_touched()

    def _flush_touched(self) -> None:
        """Persist last-access times in one transaction, for the next engine's rebuild."""
        with self._lock:
            touched, self._touched = self._touched, {}
        if touched:  # outside the engine lock: readers' access records never wait for this
            with self.index.write() as w:
                for blob_id, (when, hits) in touched.items():
                    entry = w.get(blob_id)
                    if entry is not None:
                        entry.last_access = when
                        entry.hits += hits
                        w.touch(entry)

    def submit(self, fn: Callable[..., object], *args: object) -> Future[object]:
        return self._pool.submit(fn, *args)

    def close(self, wait: bool = False) -> None:
        """Stop the background work. ``wait``: first let fetches in flight finish (up to
        30 s), so that a hand-over leaves no write of this engine landing after the next
        engine has read the index."""
        self._stop.set()
        if self.cluster is not None:
            self.cluster.close()
        if self.uploader is not None:
            self.uploader.close()
        self._prefetch.stop()
        deadline = time.monotonic() + 30
        while wait and self._inflight and time.monotonic() < deadline:
            time.sleep(0.01)
        # Queued moves finish if they can do so quickly; any left are redone by the next
        # engine's start-up (the entries are still where they were).
        self._mover.drain(timeout=max(0.0, deadline - time.monotonic()) if wait else 5.0)
        self._mover.stop()
        self._housekeeper.join(timeout=5)
        with contextlib.suppress(Exception):
            self._flush_touched()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def check(self) -> None:
        """Policy invariants, and policy state agreeing with the index (tests, verify):
        after the queued moves are done, when both must agree exactly."""
        self.wait_started()
        self._mover.drain()
        with self._lock:
            totals = self.index.totals()
            for tier, policy in enumerate(self.policies):
                policy.check()
                name = self.config.tiers[tier].name
                if totals[name]["used_bytes"] != policy.used:
                    raise AssertionError(
                        f"tier {name}: index says {totals[name]['used_bytes']} bytes, "
                        f"policy says {policy.used}"
                    )


def clean_listings(directory: Path, max_age: float = 7 * 86400, keep: int = 10_000) -> int:
    """Delete kept origin listings (offline mode's last known state) older than ``max_age``,
    and the oldest beyond ``keep``; returns how many were deleted."""
    try:
        files = sorted(
            ((e.stat().st_mtime, e.path) for e in os.scandir(directory) if e.is_file()),
            reverse=True,
        )
    except FileNotFoundError:
        return 0
    cutoff = time.time() - max_age
    doomed = [path for i, (mtime, path) in enumerate(files) if i >= keep or mtime < cutoff]
    for path in doomed:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return len(doomed)


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says a filesystem (or LMDB's map) has no room left."""
    if isinstance(exc, lmdb.MapFullError):
        return True
    if isinstance(exc, lmdb.DiskError):
        return "space" in str(exc).lower() or "quota" in str(exc).lower()
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def attach_cluster(engine: Engine) -> Cluster | None:
    """The engine's peer layer when the config has ``[cluster]`` (see tiercache.cluster)."""
    if engine.config.cluster is None:
        return None
    from .cluster import Cluster

    return Cluster(engine, engine.config.cluster)
