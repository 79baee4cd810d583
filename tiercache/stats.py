"""Node-wide statistics of a cache, as ``fs.stats()``, ``tiercache stats`` and metrics show."""

from __future__ import annotations

from typing import Any

from .cache import Cache
from .config import Config
from .counters import ORIGIN_BUCKETS, ORIGIN_OPS, ORIGIN_STATUSES, UPLOAD_BUCKETS, slot


def collect(cache: Cache) -> dict[str, Any]:
    """Sum every process's counters and the index's totals into one report.

    Reads only shared state (counter files, the index), never asks the engine, so a
    monitoring process never becomes the engine just by looking.
    """
    return report(cache.config, cache.counters.snapshot(), cache.index.totals(), pending(cache))


def pending(cache: Cache) -> dict[str, Any] | None:
    """What the write tier's journal holds now (None: writes are off)."""
    journal = cache.staging.existing_journal() if cache.staging is not None else None
    return journal.summary() if journal is not None else None


def report(
    config: Config,
    counts: list[int],
    totals: dict[str, dict[str, int]],
    uploads: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report from one counters snapshot and the index totals.

    Split from :func:`collect` so the Prometheus exporter builds every metric of a scrape
    from the same snapshot that ``fs.stats()`` would show.

    A tier's ``misses`` are the requests that reached it and were not answered there, so
    hit ratios read naturally per tier: the RAM tier's misses include the SSD tier's hits.
    """
    requests = sum(counts[slot("hits", t)] for t in range(len(config.tiers)))
    requests += counts[slot("misses")]
    tiers: dict[str, Any] = {}
    reached = requests
    for t, tier in enumerate(config.tiers):
        hits = counts[slot("hits", t)]
        misses = reached - hits
        tiers[tier.name] = {
            "hits": hits,
            "misses": misses,
            "hit_ratio": hits / reached if reached else 0.0,
            "entries": totals[tier.name]["entries"],
            "used_bytes": totals[tier.name]["used_bytes"],
            "capacity_bytes": tier.capacity,
            "bytes_read": counts[slot("bytes_read", t)],
            "admissions": counts[slot("admissions", t)],
            "evictions": counts[slot("evictions", t)],
            "demotions": counts[slot("demotions", t)],
            "promotions": counts[slot("promotions", t)],
            "bypass_full": counts[slot("bypass_full", t)],
            "invalidations": counts[slot("invalidations", t)],
        }
        reached = misses
    hits_total = requests - counts[slot("misses")]

    def g(name: str) -> int:
        return counts[slot(name)]

    out = {
        "requests": requests,
        "hits": hits_total,
        "misses": g("misses"),
        "hit_ratio": hits_total / requests if requests else 0.0,
        "tiers": tiers,
        "origin": {
            "reads": g("origin_reads"),
            "bytes": g("origin_bytes"),
            "errors": g("origin_errors"),
            "retries": g("origin_retries"),
            "heads": g("origin_heads"),
            "lists": g("origin_lists"),
            "seconds": g("origin_seconds_ns") / 1e9,
            "latency_buckets": _buckets(counts, "origin_bucket", ORIGIN_BUCKETS),
            "requests": {
                op: {status: g(f"origin_{op}_{status}") for status in ORIGIN_STATUSES}
                for op in ORIGIN_OPS
            },
        },
        "prefetch": {
            "issued": g("prefetch_issued"),
            "used": g("prefetch_used"),
            "wasted": g("prefetch_wasted"),
        },
        "not_admitted": g("not_admitted"),
        # Objects larger than every tier are read block by block and never cached.
        "streamed": {"reads": g("streamed_reads"), "bytes": g("streamed_bytes")},
        "singleflight_waits": g("singleflight_waits"),
        "checksum_failures": g("checksum_failures"),
        "read_verifications": g("read_verifications"),
        "stale_refetches": g("stale_refetches"),
        "data_wait_seconds": g("data_wait_ns") / 1e9,
        "uploads": {
            **(uploads or {"pending_files": 0, "pending_bytes": 0, "failed_files": 0}),
            "uploads": g("uploads"),
            "uploaded_bytes": g("uploaded_bytes"),
            "sent_bytes": g("upload_part_bytes"),
            "upload_failures": g("upload_failures"),
            "upload_retries": g("upload_retries"),
            "staged_reads": g("staged_reads"),
            "seconds": g("upload_seconds_ns") / 1e9,
            "latency_buckets": _buckets(counts, "upload_bucket", UPLOAD_BUCKETS),
        },
    }
    if config.cluster is not None:
        out["cluster"] = cluster_report(config, g)
    return out


def cluster_report(config: Config, g: Any) -> dict[str, Any]:
    """The peer tier: reads peers answered and their bytes, bytes served to peers, and how
    many of the other members are up (as the engine last wrote it)."""
    from .cluster import read_state

    state = read_state(config.index_path) or {}
    others = [m for m in state.get("members", []) if m.get("address") != state.get("self")]
    return {
        "peer_hits": g("peer_hits"),
        "peer_bytes": g("peer_bytes"),
        "served_bytes": g("peer_served_bytes"),
        "served": g("peer_served"),
        "peers": len(others),
        "peers_up": sum(1 for m in others if m.get("up")),
        "self": state.get("self"),
    }


def _buckets(counts: list[int], name: str, bounds: tuple[float, ...]) -> dict[str, int]:
    """A histogram's per-bucket counts (not cumulative) by upper bound, ``+Inf`` last."""
    out = {str(b): counts[slot(f"{name}:{i}")] for i, b in enumerate(bounds)}
    out["+Inf"] = counts[slot(f"{name}:{len(bounds)}")]
    return out
