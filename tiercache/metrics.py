"""Prometheus metrics for a whole node's cache, and an HTTP exporter that serves them.

Why a custom collector and not prometheus-client's Counter objects: the reads happen in
every process on the node (DataLoader workers, ranks, a FUSE daemon), each counting into
its own counter file (see :mod:`tiercache.counters`). A ``Counter`` in the serving process
would show only that process's share. Instead, each scrape sums every process's file and
reads the index's per-tier totals, so whichever process serves ``/metrics`` shows the node.

Scraping only reads shared files; it never talks to the engine, so a monitoring process
never becomes the engine (nor keeps one alive) just by looking.

Labels are bounded by construction: tier names from the config, and fixed vocabularies
for ``result``, ``reason``, ``op``, ``status`` and ``outcome``; never a key or a path.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .cache import Cache, open_cache
from .config import Config, load_config
from .counters import (
    ORIGIN_BUCKETS,
    ORIGIN_OPS,
    ORIGIN_STATUSES,
    PEER_DIRECTIONS,
    PEER_RESULTS,
    PEER_SLOTS,
    UPLOAD_BUCKETS,
    slot,
)
from .stats import pending, report

#: Why an entry left a tier for good (``tiercache_evictions_total{reason}``) -> counter.
EVICTION_REASONS = {
    "capacity": "evictions",  # the policy chose it to make room and no slower tier took it
    "invalidated": "invalidations",  # stale at the origin or failed its checksum
}
PREFETCH_OUTCOMES = ("issued", "used", "wasted")


class CacheCollector(Collector):
    """Yields the node totals of one cache on every scrape."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    def describe(self) -> list[Metric]:
        return []  # registering must not read the cache; names are only known per scrape

    def collect(self) -> Iterator[Metric]:
        cache = self.cache
        counts = cache.counters.snapshot()  # one snapshot: every metric of a scrape agrees
        out = families(cache.config, counts, cache.index.totals(), pending(cache))
        live = GaugeMetricFamily(
            "tiercache_processes",
            "Live processes that have read through this cache (each keeps a counter file); "
            "divides the data-wait rate into a per-process share of wall time.",
        )
        live.add_metric([], live_processes(cache.counters.dir))
        out.append(live)
        return iter(out)


def families(
    config: Config,
    counts: list[int],
    totals: dict[str, dict[str, int]],
    uploads: dict[str, Any] | None = None,
) -> list[Metric]:
    """Every metric family, from one counters snapshot, the index's per-tier totals and
    the write journal's summary (``uploads``)."""
    stats = report(config, counts, totals, uploads)
    names = config.tier_names
    last = names[-1]
    out: list[Metric] = []

    def counter(
        name: str, doc: str, labels: list[str], samples: list[tuple[list[str], float]]
    ) -> None:
        family = CounterMetricFamily(name, doc, labels=labels)
        for values, value in samples:
            family.add_metric(values, value)
        out.append(family)

    def gauge(name: str, doc: str, values: dict[str, float]) -> None:
        family = GaugeMetricFamily(name, doc, labels=["tier"])
        for tier, value in values.items():
            family.add_metric([tier], value)
        out.append(family)

    tiers = stats["tiers"]
    requests = [([n, "hit"], tiers[n]["hits"]) for n in names]
    requests.append(([last, "miss"], stats["misses"]))
    counter(
        "tiercache_requests",
        "Object accesses (open, cat_file): a hit at the tier that answered, a miss once "
        "at the last cache tier.",
        ["tier", "result"],
        requests,
    )
    counter(
        "tiercache_tier_lookups",
        "Requests that reached this tier (not answered by a faster one); hits at a tier "
        "divided by this is that tier's own hit ratio.",
        ["tier"],
        [([n], tiers[n]["hits"] + tiers[n]["misses"]) for n in names],
    )
    counter(
        "tiercache_bytes_read",
        'Bytes served from each tier on hits; tier="origin": bytes read from the origin '
        "(misses and prefetch).",
        ["tier"],
        [([n], tiers[n]["bytes_read"]) for n in names] + [(["origin"], stats["origin"]["bytes"])],
    )
    gauge(
        "tiercache_tier_used_bytes",
        "Stored bytes in each tier.",
        {n: tiers[n]["used_bytes"] for n in names},
    )
    gauge(
        "tiercache_tier_capacity_bytes",
        "Configured capacity of each tier.",
        {n: tiers[n]["capacity_bytes"] for n in names},
    )
    gauge(
        "tiercache_tier_entries",
        "Objects held in each tier.",
        {n: tiers[n]["entries"] for n in names},
    )
    counter(
        "tiercache_evictions",
        "Entries that left a tier for good, by reason (capacity: made room and no slower "
        "tier took it; invalidated: stale or corrupt). Demotions are counted apart.",
        ["tier", "reason"],
        [
            ([n, reason], counts[slot(name, t)])
            for t, n in enumerate(names)
            for reason, name in EVICTION_REASONS.items()
        ],
    )
    counter(
        "tiercache_promotions",
        "Entries moved one tier up (hot in a slower tier).",
        ["from_tier", "to_tier"],
        [([n, names[t - 1]], tiers[n]["promotions"]) for t, n in enumerate(names) if t > 0],
    )
    counter(
        "tiercache_demotions",
        "Entries moved one tier down to make room.",
        ["from_tier", "to_tier"],
        [
            ([n, names[t + 1]], tiers[n]["demotions"])
            for t, n in enumerate(names)
            if t + 1 < len(names)
        ],
    )
    counter(
        "tiercache_admissions",
        "Misses stored into each tier.",
        ["tier"],
        [([n], tiers[n]["admissions"]) for n in names],
    )
    counter(
        "tiercache_admission_skipped_disk_full",
        "Writes into a tier skipped because its filesystem was (nearly) full.",
        ["tier"],
        [([n], tiers[n]["bypass_full"]) for n in names],
    )
    counter(
        "tiercache_not_admitted",
        "Misses the admission policy declined to store.",
        [],
        [([], stats["not_admitted"])],
    )

    origin = stats["origin"]
    counter(
        "tiercache_origin_requests",
        "Origin request attempts by operation (get, head, list) and outcome (ok, "
        "not_found, error); retries count as attempts.",
        ["op", "status"],
        [
            ([op, status], origin["requests"][op][status])
            for op in ORIGIN_OPS
            for status in ORIGIN_STATUSES
        ],
    )
    out.append(
        histogram(
            "tiercache_origin_seconds",
            "Latency of whole-object origin reads.",
            counts,
            "origin_bucket",
            ORIGIN_BUCKETS,
            origin["seconds"],
        )
    )
    counter(
        "tiercache_origin_errors",
        "Failed origin attempts (network errors, truncated bodies), retried or not.",
        [],
        [([], origin["errors"])],
    )
    counter(
        "tiercache_origin_retries",
        "Origin attempts retried after an error.",
        [],
        [([], origin["retries"])],
    )
    counter(
        "tiercache_prefetch",
        "Prefetches issued, later used by a read, or wasted.",
        ["outcome"],
        [([o], stats["prefetch"][o]) for o in PREFETCH_OUTCOMES],
    )
    counter(
        "tiercache_singleflight_waits",
        "Misses that waited for another caller's fetch of the same object.",
        [],
        [([], stats["singleflight_waits"])],
    )
    counter(
        "tiercache_checksum_failures",
        "Cached blobs that failed verification (refetched).",
        [],
        [([], stats["checksum_failures"])],
    )
    counter(
        "tiercache_read_verifications",
        "Disk-tier blobs hashed on the read path (once per blob and verify_ttl_seconds).",
        [],
        [([], stats["read_verifications"])],
    )
    counter(
        "tiercache_stale_refetches",
        "Cached objects found changed at the origin.",
        [],
        [([], stats["stale_refetches"])],
    )
    counter(
        "tiercache_streamed_reads",
        "Reads of objects larger than every tier, streamed through without being cached.",
        [],
        [([], stats["streamed"]["reads"])],
    )
    counter(
        "tiercache_streamed_bytes",
        "Bytes of objects larger than every tier fetched for readers (never cached).",
        [],
        [([], stats["streamed"]["bytes"])],
    )
    counter(
        "tiercache_data_wait_seconds",
        "Time consumers waited for bytes (locating and fetching objects), summed over "
        "all processes.",
        [],
        [([], stats["data_wait_seconds"])],
    )
    if config.cluster is not None:
        out.extend(peer_families(config, counts))
    out.extend(upload_families(stats["uploads"], counts))
    return out


def histogram(
    name: str, doc: str, counts: list[int], slot_name: str, bounds: tuple[float, ...], total: float
) -> Metric:
    """A histogram family from per-bucket counter slots (``<slot_name>:<i>``, +Inf last)."""
    cumulative, buckets = 0, []
    for i, bound in enumerate(bounds):
        cumulative += counts[slot(f"{slot_name}:{i}")]
        buckets.append((floatToGoString(bound), cumulative))
    cumulative += counts[slot(f"{slot_name}:{len(bounds)}")]
    buckets.append(("+Inf", cumulative))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=total)


def upload_families(uploads: dict[str, Any], counts: list[int]) -> list[Metric]:
    """The write tier's metrics: what waits to reach the origin, what did, what failed."""
    gauges = (
        (
            "tiercache_upload_pending_bytes",
            "Bytes written on this node and not yet durable at the origin (failed included).",
            uploads.get("pending_bytes", 0) + uploads.get("failed_bytes", 0),
        ),
        (
            "tiercache_upload_pending_files",
            "Writes, deletes and renames not yet at the origin (failed ones not included).",
            uploads.get("pending_files", 0),
        ),
        (
            "tiercache_upload_failed_files",
            "Operations the origin refused for good: kept staged, retried every 5 minutes.",
            uploads.get("failed_files", 0),
        ),
        (
            "tiercache_upload_oldest_pending_seconds",
            "Age of the oldest write not yet at the origin (0: none).",
            uploads.get("oldest_pending_seconds", 0.0),
        ),
    )
    counters = (
        (
            "tiercache_uploaded_bytes",
            "Bytes of files verified durable at the origin.",
            uploads["uploaded_bytes"],
        ),
        (
            "tiercache_upload_failures",
            "Uploads the origin refused for good (403, a missing bucket), each time.",
            uploads["upload_failures"],
        ),
        (
            "tiercache_upload_retries",
            "Upload requests that failed and were retried (network, throttling, 5xx).",
            uploads["upload_retries"],
        ),
    )
    out: list[Metric] = []
    for kind, table in ((GaugeMetricFamily, gauges), (CounterMetricFamily, counters)):
        for name, doc, value in table:
            family = kind(name, doc)
            family.add_metric([], value)
            out.append(family)
    out.append(
        histogram(
            "tiercache_upload_seconds",
            "Time from an upload's first attempt until it was verified at the origin.",
            counts,
            "upload_bucket",
            UPLOAD_BUCKETS,
            uploads["seconds"],
        )
    )
    return out


def peer_families(config: Config, counts: list[int]) -> list[Metric]:
    """``tiercache_peer_*``: per peer of a ``[cluster]``, labelled with its address (members
    by their position in the member list the engine last wrote; the rest as "other")."""
    from .cluster import read_state

    state = read_state(config.index_path) or {}
    members = [m.get("address", "") for m in state.get("members", [])]
    labels = {i: a for i, a in enumerate(members[: PEER_SLOTS - 1]) if a != state.get("self")}
    labels[PEER_SLOTS - 1] = "other"
    requests = CounterMetricFamily(
        "tiercache_peer_requests",
        "Reads this node sent to a peer, by outcome: hit (the peer had it), miss (the peer "
        "read the origin for it), not_found, error, timeout, refused (401), corrupt (failed "
        "its checksum or version check; read elsewhere).",
        labels=["peer", "result"],
    )
    moved = CounterMetricFamily(
        "tiercache_peer_bytes",
        "Bytes received from (in) and served to (out) each peer.",
        labels=["peer", "direction"],
    )
    for i, peer in labels.items():
        for result in PEER_RESULTS:
            requests.add_metric([peer, result], counts[slot(f"peer_request:{i}:{result}")])
        for direction in PEER_DIRECTIONS:
            moved.add_metric([peer, direction], counts[slot(f"peer_bytes:{i}:{direction}")])
    return [requests, moved]


def live_processes(directory: Path) -> int:
    """Counter files whose owner is alive: each owner holds a shared lock for its lifetime.

    A non-blocking exclusive lock that fails means someone still holds it; the lock is
    dropped at once, so at worst the engine's fold of dead files waits for the next round.
    """
    alive = 0
    for path in directory.glob("proc-*"):
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                alive += 1
            finally:
                os.close(fd)  # closing drops our lock, if we got it
    return alive


def registry_for(cache: Cache) -> CollectorRegistry:
    """A registry of its own (not the global one) holding only this cache's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CacheCollector(cache))
    return registry


@dataclass
class MetricsServer:
    """A running exporter: ``url`` to scrape, ``close()`` to stop it."""

    server: Any
    thread: threading.Thread
    bind: str
    port: int
    _closed: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(
    config: Config | dict[str, Any] | str | os.PathLike[str] | None = None,
    port: int | None = None,
    bind: str | None = None,
) -> MetricsServer:
    """Serve the node totals of ``config``'s cache on ``http://bind:port/metrics``.

    ``port``/``bind`` default to the config's ``[metrics]`` section (bind: loopback). An
    explicit ``port=0`` picks a free port (see ``MetricsServer.port``); a config port of 0
    means metrics are off, so asking to serve it is an error that says how to turn it on.
    Runs in a daemon thread; the caller keeps going (a demo, a training loop).
    """
    cfg = load_config(config)
    if port is None:
        port = cfg.metrics.port
        if port == 0:
            raise ValueError(
                f"{cfg.source}: [metrics] port is 0 (metrics off); set [metrics] port "
                "or pass a port"
            )
    if not 0 <= port <= 65535:
        raise ValueError(f"metrics port {port} is not a TCP port (0-65535)")
    bind = bind or cfg.metrics.bind
    server, thread = start_http_server(port, addr=bind, registry=registry_for(open_cache(cfg)))
    return MetricsServer(server, thread, bind, server.server_port)


def serve_if_configured(config: Config) -> MetricsServer | None:
    """Start the exporter when the config's ``[metrics] port`` is set; otherwise None."""
    return serve(config) if config.metrics.port else None
