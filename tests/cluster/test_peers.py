"""Two engines in one process on loopback: the peer protocol's checks, quickly.

Each "node" is its own cache (tiers, index, engine, peer server on its own port); both live
in this process, which is enough to test what one engine does with the other's answers.
The multi-process, multi-namespace behaviour is in ``test_namespaces.py``.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.netns import write_token
from tests.cluster.node import payload
from tests.conftest import S3, put_objects
from tiercache import TierCacheFileSystem
from tiercache.cluster.ring import Member, Ring

SIZE = 160 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Pair:
    """Node A and node B, each a TierCacheFileSystem whose engine serves its peer."""

    a: TierCacheFileSystem
    b: TierCacheFileSystem
    peers: list[str]
    bucket: str
    token: str
    names: list[str]
    tag: str

    def owner(self, name: str) -> str:
        ring = Ring([Member(p) for p in self.peers], self.peers[0])
        return ring.owner_of_key(f"s3://{self.bucket}/{name}").address

    def owned_by(self, i: int) -> list[str]:
        return [n for n in self.names if self.owner(n) == self.peers[i]]


def node_config(root: Path, name: str, peers: list[str], me: int, token: Path,
                **cluster: Any) -> dict[str, Any]:  # fmt: skip
    return {
        "tiers": [
            {"name": "ram", "path": f"/dev/shm/tcc-{name}", "capacity": "4MiB",
             "verify": "on-change"},
            {"name": "ssd", "path": str(root / name / "ssd"), "capacity": "16MiB"},
        ],
        "index": {"path": str(root / name / "index")},
        "validation": {"mode": "ttl", "ttl_seconds": 600},
        "cluster": {"peers": peers, "self": peers[me], "token_file": str(token),
                    "timeout_seconds": 2, "down_seconds": 30, **cluster},
    }  # fmt: skip


def make_pair(
    s3: S3,
    bucket: str,
    root: Path,
    options: dict[str, Any] | None = None,
    count: int = 8,
    **cluster: Any,
) -> Pair:
    names = [f"d/obj-{i}" for i in range(count)]
    put_objects(s3, bucket, {n: payload(i, SIZE) for i, n in enumerate(names)})
    token_file = root / "token"
    token = write_token(token_file)
    peers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    tag = uuid.uuid4().hex[:8]
    fss = []
    for i in range(2):
        config = node_config(root, f"{tag}-{i}", peers, i, token_file, **cluster)
        fs = TierCacheFileSystem(config=config, target_protocol="s3",
                                 target_options=options or s3.options,
                                 skip_instance_cache=True)  # fmt: skip
        engine = fs.cache.engine
        assert engine is not None and engine.cluster is not None
        assert engine.cluster.server.wait_bound(10)
        fss.append(fs)
    return Pair(fss[0], fss[1], peers, bucket, token, names, tag)


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tcc-peers-"))
    yield path
    from tiercache.cache import close_all

    close_all()
    TierCacheFileSystem.clear_instance_cache()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pair(s3_server: S3, bucket: str, root: Path) -> Iterator[Pair]:
    made = make_pair(s3_server, bucket, root)
    yield made
    from tiercache.cache import close_all

    close_all()
    for path in Path("/dev/shm").glob(f"tcc-{made.tag}-*"):
        shutil.rmtree(path, ignore_errors=True)


def read(fs: TierCacheFileSystem, pair: Pair, name: str) -> bytes:
    return bytes(fs.cat_file(f"{pair.bucket}/{name}"))


def test_each_object_is_fetched_once_by_its_owner_and_read_from_it_by_the_other(
    pair: Pair, s3_server: S3
) -> None:
    s3_server.start_counting()
    for i, name in enumerate(pair.names):
        assert read(pair.b, pair, name) == payload(i, SIZE)
        assert read(pair.a, pair, name) == payload(i, SIZE)
    gets = [r for r in s3_server.requests("GET") if "/d/obj-" in r.get("url", "")]
    assert len(gets) == len(pair.names)
    a, b = pair.a.stats(), pair.b.stats()
    # B read A's keys from A; A read B's keys from B (or its own copy, as owner).
    assert b["cluster"]["peer_hits"] == len(pair.owned_by(0))
    assert a["cluster"]["peer_hits"] == len(pair.owned_by(1))
    assert (
        a["cluster"]["served_bytes"] == b["cluster"]["peer_bytes"] == SIZE * len(pair.owned_by(0))
    )
    assert a["origin"]["reads"] == len(pair.owned_by(0))
    assert b["cluster"]["peers_up"] == 1


def _request(pair: Pair, url: str, headers: dict[str, str]) -> tuple[int, bytes, Any]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status), resp.read(), resp.headers
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read(), exc.headers


def test_range_get_of_a_cached_blob_carries_the_checksum_of_its_part(pair: Pair) -> None:
    name = pair.owned_by(0)[0]
    i = pair.names.index(name)
    read(pair.a, pair, name)  # now cached at A
    spec = '{"options":{},"protocol":"s3"}'
    base = f"http://{pair.peers[0]}/cluster/v1/blob?key=s3://{pair.bucket}/{name}"
    auth = {"Authorization": f"Bearer {pair.token}", "X-Tiercache-Origin": spec}
    status, body, headers = _request(pair, base, {**auth, "Range": "bytes=1000-4999"})
    assert status == 206
    assert body == payload(i, SIZE)[1000:5000]
    assert headers["Content-Range"] == f"bytes 1000-4999/{SIZE}"
    assert int(headers["X-Tiercache-Crc32"], 16) == zlib.crc32(body)
    assert headers["X-Tiercache-Cache"] == "hit"
    status, body, headers = _request(pair, base, auth)
    assert status == 200 and body == payload(i, SIZE)
    assert int(headers["X-Tiercache-Crc32"], 16) == zlib.crc32(body)
    status, _, _ = _request(pair, base, {"X-Tiercache-Origin": spec})
    assert status == 401


def test_an_owner_reads_only_object_stores_for_its_peers(pair: Pair) -> None:
    spec = '{"options":{},"protocol":"file"}'
    url = f"http://{pair.peers[0]}/cluster/v1/blob?key=file:///etc/passwd"
    status, body, _ = _request(
        pair, url, {"Authorization": f"Bearer {pair.token}", "X-Tiercache-Origin": spec}
    )
    assert status == 422 and b"passwd" not in body and b"root:" not in body


def test_a_damaged_copy_at_the_owner_is_never_taken_and_the_owner_repairs_it(
    pair: Pair, s3_server: S3
) -> None:
    name = pair.owned_by(0)[0]
    i = pair.names.index(name)
    read(pair.a, pair, name)
    engine_a = pair.a.cache.engine
    assert engine_a is not None
    entry = pair.a.cache.index.get(f"s3://{pair.bucket}/{name}")
    assert entry is not None and not entry.blob.small
    blob = engine_a.stores[entry.tier].blob_path(entry.blob_id)
    with open(blob, "r+b") as f:  # one flipped byte, same size: only a checksum sees it
        f.seek(SIZE // 2)
        byte = f.read(1)
        f.seek(SIZE // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    s3_server.start_counting()
    assert read(pair.b, pair, name) == payload(i, SIZE)  # from the origin instead
    assert len([r for r in s3_server.requests("GET", key=name)]) == 1
    assert pair.a.cache.index.get(f"s3://{pair.bucket}/{name}") is None  # A dropped it
    assert pair.a.stats()["checksum_failures"] == 1


def test_a_stale_copy_at_the_owner_is_refreshed_when_the_reader_knows_better(
    pair: Pair, s3_server: S3
) -> None:
    name = pair.owned_by(0)[0]
    read(pair.a, pair, name)  # A caches version 1
    new = os.urandom(SIZE)
    s3_server.client.put_object(Bucket=pair.bucket, Key=name, Body=new)
    pair.b.ls(f"{pair.bucket}/d", refresh=True)  # B's listing knows version 2
    assert read(pair.b, pair, name) == new
    assert read(pair.a, pair, name) == new  # A refetched it for B, and has it now


def test_reads_go_around_an_owner_that_does_not_answer(
    s3_server: S3, bucket: str, root: Path
) -> None:
    token_file = root / "token"
    write_token(token_file)
    silent = socket.socket()  # listens, never accepts: a hung engine
    silent.bind(("127.0.0.1", 0))
    silent.listen(0)
    peers = [f"127.0.0.1:{silent.getsockname()[1]}", f"127.0.0.1:{free_port()}"]
    ring = Ring([Member(p) for p in peers], peers[1])
    candidates = [f"d/obj-{i}" for i in range(64)]
    owned = [n for n in candidates if ring.owner_of_key(f"s3://{bucket}/{n}").address == peers[0]]
    names = owned[:6] + [n for n in candidates if n not in owned][:2]  # mostly the silent one's
    put_objects(s3_server, bucket, {n: payload(i, SIZE) for i, n in enumerate(names)})
    config = node_config(root, f"{uuid.uuid4().hex[:8]}-solo", peers, 1, token_file,
                         timeout_seconds=0.5)  # fmt: skip
    options = s3_server.options
    fs = TierCacheFileSystem(config=config, target_protocol="s3", target_options=options,
                             skip_instance_cache=True)  # fmt: skip
    try:
        for i, name in enumerate(names):
            assert fs.cat_file(f"{bucket}/{name}") == payload(i, SIZE)
        stats = fs.stats()
        assert stats["origin"]["reads"] == len(names)
        assert stats["cluster"]["peers_up"] == 0
        assert stats["cluster"]["peer_hits"] == 0
    finally:
        silent.close()
        shutil.rmtree(config["tiers"][0]["path"], ignore_errors=True)


def test_peer_metrics_name_each_peer_and_outcome(pair: Pair) -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from tiercache.metrics import CacheCollector

    for name in pair.names:
        read(pair.b, pair, name)
    registry = CollectorRegistry()
    registry.register(CacheCollector(pair.b.cache))
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }
    a, b = pair.peers
    hits = len(pair.owned_by(0))  # A read each from the origin for B: a "miss" at A
    assert samples[("tiercache_peer_requests_total", (("peer", a), ("result", "miss")))] == hits
    assert samples[("tiercache_peer_requests_total", (("peer", a), ("result", "error")))] == 0
    moved = ("tiercache_peer_bytes_total", (("direction", "in"), ("peer", a)))
    assert samples[moved] == hits * SIZE
    assert not any(dict(labels).get("peer") == b for _, labels in samples)  # never itself


def test_an_owner_slow_at_the_origin_is_waited_for_not_marked_down(
    s3_server: S3, bucket: str, root: Path
) -> None:
    """The owner says it is alive (``100 Continue``) while its origin read takes longer than
    the requester's timeout: one origin GET, by the owner, and the owner stays up."""
    from tests.reliability.faultproxy import Fault, FaultProxy

    proxy = FaultProxy(s3_server.endpoint)
    pair = None
    try:
        options = {**s3_server.options, "endpoint_url": proxy.endpoint}
        pair = make_pair(s3_server, bucket, root, options=options, timeout_seconds=1)
        name = pair.owned_by(0)[0]
        proxy.add(Fault("slow", times=None, path=name, delay=3.0))
        assert read(pair.b, pair, name) == payload(pair.names.index(name), SIZE)
        assert len(proxy.requests("GET", path=name)) == 1  # the owner's; B did not give up
        cluster = pair.b.stats()["cluster"]
        assert cluster["peer_hits"] == 1 and cluster["peers_up"] == 1
    finally:
        proxy.close()
        from tiercache.cache import close_all

        close_all()
        if pair is not None:
            for path in Path("/dev/shm").glob(f"tcc-{pair.tag}-*"):
                shutil.rmtree(path, ignore_errors=True)


def test_replicas_use_spare_ram_go_first_and_are_never_demoted(
    s3_server: S3, bucket: str, root: Path
) -> None:
    """B (4 MiB RAM, 16 MiB SSD) reads A's keys, then its own 5 MiB of keys: A's keys are
    replicas in B's spare RAM, then make way for B's own keys and are dropped, never copied
    to B's SSD tier; none of B's own keys leaves B."""
    pair = make_pair(s3_server, bucket, root, count=64)
    try:
        engine = pair.b.cache.engine
        assert engine is not None and engine.cluster is not None
        theirs, mine = pair.owned_by(0)[:10], pair.owned_by(1)
        for name in theirs:
            assert read(pair.b, pair, name) == payload(pair.names.index(name), SIZE)
        keys = {e.key: e.tier for e in pair.b.cache.index}
        assert all(keys.get(f"s3://{pair.bucket}/{n}") == 0 for n in theirs)  # kept in RAM
        for name in mine:
            assert read(pair.b, pair, name) == payload(pair.names.index(name), SIZE)
        engine._mover.drain()
        keys = {e.key: e.tier for e in pair.b.cache.index}
        assert not any(f"s3://{pair.bucket}/{n}" in keys for n in theirs)  # dropped
        assert all(f"s3://{pair.bucket}/{n}" in keys for n in mine)  # none of B's lost
        assert 1 in keys.values()  # B's own keys were demoted to make room
        engine.check()  # policies and index agree, replicas included
    finally:
        from tiercache.cache import close_all

        close_all()
        for path in Path("/dev/shm").glob(f"tcc-{pair.tag}-*"):
            shutil.rmtree(path, ignore_errors=True)
