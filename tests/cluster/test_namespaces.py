"""Three nodes in network namespaces pool their caches through real engines over HTTP."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.cluster.conftest import PORT, Cluster
from tiercache.cluster.ring import Member, Ring


def node_stats(config: dict[str, Any]) -> dict[str, Any]:
    """A node's statistics, read from its files (the whole node: engine and readers)."""
    from tiercache.cache import open_cache
    from tiercache.config import load_config
    from tiercache.stats import collect

    return collect(open_cache(load_config(config)))


def finish(proc: Any, out: Path, timeout: float = 180) -> dict[str, Any]:
    proc.wait(timeout=timeout)
    assert proc.returncode == 0, f"reader exited with {proc.returncode}"
    return dict(json.loads(out.read_text()))


def test_three_nodes_read_disjoint_and_overlapping_sets_each_object_leaves_s3_once(
    cluster: Cluster,
) -> None:
    for i in range(3):
        cluster.start_engine(i)
    names = [name for name, _, _ in cluster.objects]
    cluster.origin.start_counting()
    readers = [
        cluster.start_reader(0, names[:6], epochs=2),  # disjoint from node 1's
        cluster.start_reader(1, names[6:], epochs=2),
        cluster.start_reader(2, names[3:9] + names[:3], epochs=2),  # overlaps both
    ]
    reports = [finish(proc, out) for proc, out in readers]
    for report in reports:
        assert report["errors"] == [] and report["wrong"] == []
    assert [r["reads"] for r in reports] == [12, 2 * (len(names) - 6), 18]
    gets = cluster.origin.gets("data/")
    assert gets == {name: 1 for name in names}, gets  # each object left S3 once
    clusters = [node_stats(config)["cluster"] for config in cluster.configs]
    assert all(c["peers"] == 2 and c["peers_up"] == 2 for c in clusters)
    # Most reads were answered by the owner: with 3 nodes, 2 of 3 keys live elsewhere.
    assert sum(c["peer_hits"] for c in clusters) >= 8
    assert sum(c["peer_bytes"] for c in clusters) == sum(c["served_bytes"] for c in clusters)


def peer_requests(config: dict[str, Any]) -> dict[tuple[str, str], float]:
    """``tiercache_peer_requests_total`` of a node, by (peer, result)."""
    from tiercache.cache import open_cache
    from tiercache.config import load_config
    from tiercache.metrics import families

    cache = open_cache(load_config(config))
    out = {}
    for family in families(cache.config, cache.counters.snapshot(), cache.index.totals()):
        if family.name == "tiercache_peer_requests":
            for sample in family.samples:
                out[(sample.labels["peer"], sample.labels["result"])] = sample.value
    return out


def test_killed_engine_others_read_exact_bytes_and_the_node_rejoins_with_its_cache(
    cluster: Cluster,
) -> None:
    engines = [cluster.start_engine(i) for i in range(3)]
    names = [name for name, _, _ in cluster.objects]
    peers = cluster.peers()
    ring = Ring([Member(p) for p in peers], peers[0])
    owner = {n: ring.owner_of_key(f"s3://{cluster.bucket}/{n}").address for n in names}
    on_2 = [n for n in names if owner[n] == peers[2]]
    assert on_2
    cluster.origin.start_counting()
    # Nodes 0 and 1 read everything, 4 times; node 2 only serves. Its engine is killed in
    # the middle of the second pass: nobody on node 2 takes over, so its keys must be read
    # around it (the next owner, or the origin).
    readers = [cluster.start_reader(i, names[i:] + names[:i], epochs=4, pause=0.03)
               for i in range(2)]  # fmt: skip
    line = readers[0][0].stdout.readline()
    assert json.loads(line)["epoch"] == 0
    engines[2][0].send_signal(signal.SIGKILL)
    engines[2][0].wait()
    reports = [finish(proc, out) for proc, out in readers]
    for report in reports:
        assert report["errors"] == [] and report["wrong"] == []
        assert report["reads"] == 4 * len(names)
    gets = cluster.origin.gets("data/")
    # Keys of the others: once. Node 2's: once before the kill, at most once more after it
    # (by the next owner, for both readers).
    assert all(gets.get(n) == 1 for n in names if owner[n] != peers[2]), gets
    assert all(1 <= gets.get(n, 0) <= 2 for n in on_2), gets
    failed = sum(v for (peer, result), v in peer_requests(cluster.configs[0]).items()
                 if peer == peers[2] and result in ("error", "timeout"))  # fmt: skip
    assert failed >= 1  # node 0 did find node 2 gone (and read around it)

    # Node 2 restarts with the cache it had: its entries are still there, and a node that
    # lost its own cache reads node 2's keys from node 2, not from S3.
    proc, ready = cluster.start_engine(2)
    assert sum(t["entries"] for t in ready["tiers"].values()) > 0
    engines[0][0].send_signal(signal.SIGTERM)
    engines[0][0].wait(timeout=30)
    fresh = json.loads(json.dumps(cluster.configs[0]))
    for tier in fresh["tiers"]:
        tier["path"] += "-fresh"
    fresh["index"]["path"] += "-fresh"
    cluster.origin.start_counting()
    reader, out = cluster.start_reader(0, on_2, config=fresh)
    report = finish(reader, out)
    assert report["errors"] == [] and report["wrong"] == []
    assert cluster.origin.gets("data/") == {}
    assert report["stats"]["cluster"]["peer_hits"] == len(on_2)


def _get(url: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_requests_without_the_cluster_token_are_refused(cluster: Cluster) -> None:
    cluster.start_engine(0)
    base = f"http://{cluster.net.nodes[0].address}:{PORT}"
    blob = f"{base}/cluster/v1/blob?key=s3://{cluster.bucket}/data/obj-00"
    assert _get(f"{base}/cluster/v1/hello", None) == 401
    assert _get(f"{base}/cluster/v1/hello", "not-the-token-at-all") == 401
    assert _get(blob, None) == 401
    assert _get(f"{base}/cluster/v1/hello", cluster.token) == 200
