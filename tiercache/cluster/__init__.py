"""One cache across the cluster: engines on several nodes pool their tiers.

Every cache key has one owner node, by weighted rendezvous hashing over the member list
(``ring.py``). A miss on this node for a key another node owns is read from that owner over
HTTP (``peer_client.py``); the owner serves it from its tiers with ``sendfile``, or reads the
origin once for everyone on its own miss (``peer_server.py``). So a peer is one more tier
between this node's tiers and the origin, and with the data smaller than the cluster's
tiers each object leaves the origin once.

Nothing here may fail a read: a peer that does not answer is marked down for a back-off
(``health.py``) and its keys are read from the next owner or the origin; bytes from a peer
are kept only when their checksum and origin version check out.

:class:`Cluster` is the part the engine owns: it is made with the engine, wraps the engine's
eviction policies so that copies of other nodes' keys go first (``replicas.py``), and starts
the peer server with it. Membership is the static ``[cluster] peers`` list, or learned from
torchrun's rendezvous store (``discovery.py``).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..counters import PEER_SLOTS
from ..index import blob_id_for
from ..origin import Origin
from ..security import ensure_private_dir
from ..tiers.store import StagingFile
from ..unstored import Held
from .health import Health
from .origins import OriginBook, spec_of
from .peer_client import PeerClient, Received
from .peer_server import Freshness, PeerServer
from .protocol import PeerError
from .replicas import ReplicaFirst
from .ring import Member, Ring
from .settings import ClusterConfig, find_self, read_token, split_address

if TYPE_CHECKING:
    from ..engine import Engine

log = logging.getLogger("tiercache.cluster")

__all__ = ["Cluster", "Member", "Ring", "read_state"]

STATE_FILE = "cluster.json"  # what stats and metrics show: members and who is up
MEMBERS_FILE = "cluster-members.json"  # a learned membership, for a restarted engine
TOKEN_FILE = "cluster.token"  # this engine's own token when the config names none
_ASKED_MAX = 1 << 18


class Cluster:
    """The engine's peer layer: membership, placement, the peer server and client."""

    def __init__(self, engine: Engine, config: ClusterConfig) -> None:
        self.engine = engine
        self.config = config
        self.counters = engine.counters
        self.index_path = engine.config.index_path
        self.capacity = sum(t.capacity for t in engine.config.tiers)
        self.token = self._own_token()
        self.health = Health(config.down_seconds, config.max_down_seconds, self._write_state)
        self.origins = OriginBook(self._build_origin)
        self.freshness = Freshness(self)
        self.ring: Ring | None = None
        self.run: str | None = None  # the torchrun run a learned membership belongs to
        self._state_lock = threading.Lock()
        self._warned: set[str] = set()
        #: Keys of other owners that peers asked this node for: it stands in for the owner
        #: (down, as the peer found), so it keeps them as its own rather than as replicas.
        self._asked: OrderedDict[str, None] = OrderedDict()
        if config.discovery == "static":
            self_address = find_self(config)  # a ConfigError names the fix
            members = [Member(p.address, float(p.capacity or 1), self.token) for p in config.peers]
            self.ring = Ring(members, self_address)
        else:
            self._load_members()
        self.client = PeerClient(config.timeout_seconds, config.connections, self._self_address)
        host, port = self._listen()
        self.server = PeerServer(self, host, port)
        # Copies of other nodes' keys are dropped before owned ones, whatever the policy.
        for tier, policy in enumerate(engine.policies):
            keep = config.replicas and tier == engine.admission_tier
            engine.policies[tier] = ReplicaFirst(policy, self.is_replica, keep=keep)

    # -- set-up --------------------------------------------------------------------------------
    def _own_token(self) -> str:
        if self.config.token_file is not None:
            return read_token(self.config.token_file)
        path = self.index_path / TOKEN_FILE  # discovery = "torch": ours, kept across restarts
        with contextlib.suppress(OSError, ValueError):
            return read_token(path)
        ensure_private_dir(self.index_path)
        token = secrets.token_hex(24)
        _write_private(path, token + "\n")
        return token

    def _listen(self) -> tuple[str, int]:
        if self.config.listen:
            return split_address(self.config.listen, "cluster.listen")
        port = 0
        ring = self.ring
        if ring is not None:
            port = split_address(ring.self_address, "cluster.self")[1]
        elif self.config.self_address:
            port = split_address(self.config.self_address, "cluster.self")[1]
        return "0.0.0.0", port

    def _build_origin(self, fs: Any) -> Origin:
        config = self.engine.config
        return Origin(fs, config.origin, self.counters, config.validation.ttl_seconds,
                      listing_dir=config.index_path / "listings")  # fmt: skip

    def start(self) -> None:
        self.server.start()
        self._write_state()

    def close(self) -> None:
        self.server.close()
        self.client.close()

    def _self_address(self) -> str:
        ring = self.ring
        return ring.self_address if ring is not None else ""

    # -- membership ----------------------------------------------------------------------------
    def install(self, members: list[Member], self_address: str, run: str | None) -> Ring:
        """Use a new member list (learned through discovery); kept for a restarted engine."""
        ring = Ring(members, self_address)
        old = self.ring
        self.ring = ring
        self.run = run
        if old is None or old.fingerprint != ring.fingerprint:
            log.info("cluster of %d node(s), this one %s (ring %s)",
                     len(ring), self_address, ring.fingerprint)  # fmt: skip
        saved = {"run": run, "self": self_address,
                 "members": [{"address": m.address, "weight": m.weight, "token": m.token}
                             for m in ring.members]}  # fmt: skip
        _write_private(self.index_path / MEMBERS_FILE, json.dumps(saved))
        self._write_state()
        return ring

    def _load_members(self) -> None:
        try:
            saved = json.loads((self.index_path / MEMBERS_FILE).read_text())
            members = [Member(m["address"], float(m["weight"]), m["token"])
                       for m in saved["members"]]  # fmt: skip
            self.ring = Ring(members, saved["self"])
            self.run = saved.get("run")
        except (OSError, ValueError, KeyError, TypeError):
            self.ring = None  # alone until this node's rank 0 publishes it

    def is_replica(self, blob_id: str) -> bool:
        """Whether a copy of ``blob_id`` here is only a replica: another node owns it and is
        up. While the owner is down, the first live node in its ranking stands in for it and
        keeps the key as its own (else it would refetch it from the origin for everyone)."""
        ring = self.ring
        if ring is None or len(ring) == 1 or ring.owns(blob_id) or blob_id in self._asked:
            return False
        for member in ring.ranking(blob_id):
            if member.address == ring.self_address:
                return False
            if self.health.is_up(member.address):
                return True
        return False

    def request(self, header: dict[str, Any]) -> dict[str, Any]:
        """Engine requests from the node's processes (``discovery.py``)."""
        op = header["op"]
        if op == "cluster_info":
            self.server.wait_bound(10.0)
            return {"port": self.server.port, "token": self.token, "capacity": self.capacity,
                    "run": self.run, "self": self._self_address()}  # fmt: skip
        if op == "cluster_join":
            members = [Member(m["address"], float(m["weight"]), m["token"])
                       for m in header["members"]]  # fmt: skip
            ring = self.install(members, header["me"], header.get("run"))
            return {"fingerprint": ring.fingerprint, "members": len(ring)}
        raise ValueError(f"unknown cluster request {op!r}")

    # -- the miss path -------------------------------------------------------------------------
    def fetch(self, origin: Origin, path: str, key: str) -> Held:
        """``key``'s bytes from its owner (or the next one, while it is down), else the origin."""
        self.origins.remember(origin)
        started = time.time()
        ring = self.ring
        if ring is not None and len(ring) > 1:
            tried = 0
            for member in ring.ranking(blob_id_for(key)):
                if member.address == ring.self_address:
                    break  # this node owns it (or is next in line): the origin, once for all
                if not self.health.usable(member.address):
                    continue
                if tried > self.config.next_owners:
                    break
                tried += 1
                try:
                    return self._from_peer(ring, member, origin, path, key)
                except PeerError as exc:
                    if not exc.down:
                        break  # the peer is fine; the origin behind it or its copy is not
        fetched = origin.fetch(path)
        return Held(fetched.data, fetched.version, started, fetched.crc32)

    def _from_peer(self, ring: Ring, member: Member, origin: Origin, path: str, key: str) -> Held:
        slot = self.slot_of(member.address)
        ttl = self.engine.config.validation.ttl_seconds
        want = origin.version_in_hand(path, ttl)
        try:
            got = self.client.get(member, key, spec_of(origin), want, self._sink(key))
        except PeerError as exc:
            self.counters.add(f"peer_request:{slot}:{exc.result}")
            if exc.down or exc.result == "refused":
                self.health.failed(member.address)
            if exc.result == "corrupt":
                self.client.suspect(member, key)
            self._warn(member.address, exc)
            raise
        self.health.succeeded(member.address)
        self.counters.add(f"peer_request:{slot}:{got.state}")
        self.counters.add(f"peer_bytes:{slot}:in", got.size)
        self.counters.add("peer_hits")
        self.counters.add("peer_bytes", got.size)
        return self._held(got)

    def _held(self, got: Received) -> Held:
        if got.staging is None:
            return Held(got.data, got.version, got.fetched_at, got.crc32)
        try:
            staged, data = got.staging.finish(got.crc32)
        except OSError as exc:  # could not sync or map the file: read it from the origin
            got.staging.discard()
            raise PeerError(f"could not stage a peer's answer in the tier: {exc}", "error") from exc
        tier = self.engine.admission_tier
        return Held(data, got.version, got.fetched_at, got.crc32, staged, tier)

    def _sink(self, key: str) -> Any:
        """Where a peer's answer is received: a blob file in the admission tier if the blob
        would be a file there, else a buffer."""
        store = self.engine.stores[self.engine.admission_tier]
        blob_id = blob_id_for(key)
        keep = self.config.replicas or not self.is_replica(blob_id)

        def sink(size: int) -> StagingFile | None:
            if not keep or store.compress or size <= store.config.small_object_bytes:
                return None
            try:
                return store.stage_file(blob_id, size)
            except OSError:  # no room there: a buffer, and the engine places it
                return None

        return sink

    def _warn(self, address: str, exc: PeerError) -> None:
        if address not in self._warned or exc.result == "corrupt":
            self._warned.add(address)
            log.warning("peer %s: %s; reading around it", address, exc)
        else:
            log.debug("peer %s: %s", address, exc)

    # -- plans ---------------------------------------------------------------------------------
    def plan(self, origin: Origin, paths: Any, cluster: Any) -> list[str]:
        """This node's plan from the cluster's order: its own reads, and the keys it owns that
        other nodes will ask it for, both where they fall in the cluster's time."""
        ring = self.ring
        if ring is None or len(ring) == 1:
            return list(paths)
        self.origins.remember(origin)
        local = set(paths)
        out: list[str] = []
        seen: set[str] = set()
        for path in cluster:
            if path in seen:
                continue
            if path in local or ring.owns(blob_id_for(origin.key(path))):
                out.append(path)
                seen.add(path)
        out.extend(p for p in paths if p not in seen)
        return out

    def asked_for(self, key: str) -> None:
        """A peer asked this node for ``key``: if another node owns it, stand in for it."""
        blob_id = blob_id_for(key)
        ring = self.ring
        if ring is None or ring.owns(blob_id):
            return
        self._asked[blob_id] = None
        while len(self._asked) > _ASKED_MAX:
            self._asked.popitem(last=False)

    # -- the serving side ----------------------------------------------------------------------
    def authorized(self, header: str) -> bool:
        return hmac.compare_digest(header.encode(), f"Bearer {self.token}".encode())

    def hello(self) -> dict[str, Any]:
        ring = self.ring
        return {"address": self._self_address(), "capacity": self.capacity, "pid": os.getpid(),
                "fingerprint": ring.fingerprint if ring else None,
                "members": len(ring) if ring else 0}  # fmt: skip

    def status(self, wait: float = 0.0) -> dict[str, Any]:
        """This node's place in the cluster (``tiercache engine``'s ready line), once the
        peer server listens (waiting up to ``wait`` seconds for it)."""
        bound = self.server.wait_bound(wait)
        ring = self.ring
        others = [m.address for m in ring.members if m.address != ring.self_address] if ring else []
        up = [a for a in others if self.health.is_up(a)]
        return {**self.hello(), "port": self.server.port if bound else None,
                "peers": len(others), "peers_up": len(up)}  # fmt: skip

    def check_suspect(self, key: str) -> bool:
        """A peer found our copy of ``key`` damaged: verify it; drop it if so."""
        from ..tiers.store import CorruptBlobError

        entry = self.engine.index.get(key)
        if entry is None:
            return False
        try:
            self.engine.stores[entry.tier].get(entry.blob_id, entry.blob)
        except CorruptBlobError:
            self.engine.counters.add("checksum_failures")
            self.engine.invalidate(key)
            return True
        except FileNotFoundError:
            return False
        return False

    def count_served(self, requester: str, nbytes: int) -> None:
        self.counters.add("peer_served")
        self.counters.add("peer_served_bytes", nbytes)
        self.counters.add(f"peer_bytes:{self.slot_of(requester)}:out", nbytes)

    def slot_of(self, address: str) -> int:
        ring = self.ring
        i = ring.index_of(address) if ring is not None else -1
        return i if 0 <= i < PEER_SLOTS - 1 else PEER_SLOTS - 1

    # -- state for stats and metrics -----------------------------------------------------------
    def _write_state(self) -> None:
        ring = self.ring
        down = self.health.down()
        state = {
            "self": ring.self_address if ring else None,
            "fingerprint": ring.fingerprint if ring else None,
            "run": self.run,
            "pid": os.getpid(),
            "members": [{"address": m.address, "up": m.address not in down}
                        for m in (ring.members if ring else ())],
        }  # fmt: skip
        with self._state_lock, contextlib.suppress(OSError):
            _write_private(self.index_path / STATE_FILE, json.dumps(state))


def read_state(index_path: Path) -> dict[str, Any] | None:
    """What the engine last wrote about the cluster (None: no cluster, or not started)."""
    try:
        state = json.loads((index_path / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}-{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
