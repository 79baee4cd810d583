"""``tiercache stats``: is the cache earning its keep? Hit ratios, where bytes come from.

Shows the node totals of a cache (every process's reads) without becoming its engine, so
it is safe to run beside a training job as often as you like.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ..cache import open_cache
from ..sizes import format_size
from ..stats import collect
from .common import add_config_args, config_from_args

_CLEAR = "\033[H\033[2J"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "stats",
        help="hit ratio per tier, entries, bytes, origin reads, evictions",
        description="Node-wide statistics of a cache, summed over every process using it.",
    )
    add_config_args(p)
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=2.0,
        metavar="SECONDS",
        help="refresh every SECONDS (default 2) until Ctrl-C; with --json, one line each",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if not config.index_path.is_dir():
        raise FileNotFoundError(
            f"no cache at {config.index_path} yet ({config.source}); nothing has read through it"
        )
    cache = open_cache(config)
    if args.watch is not None and args.watch <= 0:
        raise ValueError(f"--watch {args.watch}: the interval must be positive")
    try:
        while True:
            stats = collect(cache)
            if args.json:
                print(json.dumps(stats), flush=True)
            else:
                if args.watch is not None and sys.stdout.isatty():
                    sys.stdout.write(_CLEAR)
                print(render(stats, str(config.index_path)), flush=True)
            if args.watch is None:
                return 0
            time.sleep(args.watch)
            if not args.json and not sys.stdout.isatty():
                print(flush=True)  # a blank line between refreshes in a log
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how --watch is meant to end


def render(stats: dict[str, Any], where: str) -> str:
    """The human table: one row per tier, a total row, then origin and prefetch lines."""
    header = (
        "tier",
        "entries",
        "used / capacity",
        "hits",
        "misses",
        "hit ratio",
        "evicted",
        "demoted",
        "promoted",
    )
    rows = [header]
    for name, t in stats["tiers"].items():
        rows.append(
            (
                name,
                str(t["entries"]),
                f"{format_size(t['used_bytes'])} / {format_size(t['capacity_bytes'])}",
                str(t["hits"]),
                str(t["misses"]),
                _percent(t["hit_ratio"]),
                str(t["evictions"] + t["invalidations"]),
                str(t["demotions"]),
                str(t["promotions"]),
            )
        )
    rows.append(
        (
            "all",
            "",
            "",
            str(stats["hits"]),
            str(stats["misses"]),
            _percent(stats["hit_ratio"]),
            "",
            "",
            "",
        )
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [f"cache {where}: {stats['requests']} requests"]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    o, p = stats["origin"], stats["prefetch"]
    lines.append(
        f"origin: {o['reads']} reads, {format_size(o['bytes'])}, {o['errors']} errors, "
        f"{o['retries']} retries, {o['seconds']:.2f} s"
    )
    served = sum(t["bytes_read"] for t in stats["tiers"].values())
    lines.append(
        f"served from tiers: {format_size(served)}; data wait {stats['data_wait_seconds']:.2f} s"
    )
    lines.append(
        f"prefetch: {p['issued']} issued, {p['used']} used, {p['wasted']} wasted; "
        f"single-flight waits {stats['singleflight_waits']}, "
        f"checksum failures {stats['checksum_failures']}"
    )
    u = stats.get("uploads")
    if u is not None:
        lines.append(
            f"uploads: {u['pending_files']} pending ({format_size(u.get('pending_bytes', 0))}), "
            f"{u['failed_files']} failed; {format_size(u['uploaded_bytes'])} uploaded, "
            f"{u['upload_retries']} retries"
        )
    return "\n".join(lines)


def _percent(ratio: float) -> str:
    return f"{ratio * 100:.1f}%"
