"""``tiercache simulate TRACE``: hit ratios of eviction algorithms on a recorded access trace.

Runs the engine's own eviction code over the trace at each capacity, so the table (or the
miss-ratio curves of ``--plot``) show which algorithm and which tier size to pick.
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path
from typing import Any

from ..eviction import REGISTRY
from ..simulate import plot_miss_ratio_curves, read_trace, simulate
from ..sizes import format_size, parse_size

DEFAULT_EVICTIONS = "lru,sieve,s3fifo,arc,wtinylfu,static,belady"
DEFAULT_CAPACITIES = "10%,25%,50%"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="replay an access trace through eviction algorithms and compare hit ratios",
        description=(
            "Replay TRACE (CSV 'key,size' or 'time,key,size', or the cache's own JSON-lines "
            "access log) through each algorithm at each capacity."
        ),
    )
    p.add_argument("trace", metavar="TRACE", help="trace file")
    p.add_argument(
        "--eviction",
        default=DEFAULT_EVICTIONS,
        metavar="NAME[,NAME...]",
        help=(
            f"algorithms, comma-separated; parameters as NAME:KEY=VALUE:... "
            f"(valid: {', '.join(sorted(REGISTRY))}; default: {DEFAULT_EVICTIONS})"
        ),
    )
    p.add_argument(
        "--capacity",
        default=DEFAULT_CAPACITIES,
        metavar="SIZE|PCT[,...]",
        help=(
            "tier capacities: bytes, '512MiB', '2GiB', or '10%%' of the trace's working set "
            "(the bytes of its distinct keys); default: %(default)s"
        ),
    )
    p.add_argument("--json", action="store_true", help="print the results as a JSON list")
    p.add_argument("--plot", metavar="FILE.png", help="draw miss-ratio curves into FILE.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run)


def parse_evictions(text: str) -> list[str | dict[str, Any]]:
    """``"lru,s3fifo:small_ratio=0.2"`` -> ``["lru", {"name": "s3fifo", "small_ratio": 0.2}]``."""
    specs: list[str | dict[str, Any]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, *assignments = item.split(":")
        if not assignments:
            specs.append(name)
            continue
        spec: dict[str, Any] = {"name": name}
        for assignment in assignments:
            key, sep, value = assignment.partition("=")
            if not sep or not key:
                raise ValueError(f"--eviction {item!r}: parameters are written KEY=VALUE")
            try:
                spec[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                spec[key] = value  # a bare word, e.g. fallback=lru
        specs.append(spec)
    if not specs:
        raise ValueError(f"--eviction is empty; valid: {', '.join(sorted(REGISTRY))}")
    return specs


def parse_capacities(text: str, working_set: int) -> list[int]:
    capacities = []
    for item in text.split(","):
        if item.strip():
            capacities.append(parse_size(item.strip(), key="--capacity", total=working_set))
    if not capacities:
        raise ValueError("--capacity is empty; give sizes like 512MiB or shares like 10%")
    return sorted(set(capacities))


def run(args: argparse.Namespace) -> int:
    specs = parse_evictions(args.eviction)
    trace = read_trace(args.trace)
    working_set = trace.working_set
    capacities = parse_capacities(args.capacity, working_set)
    results = simulate(trace, specs, capacities, progress=not args.no_progress)
    if args.plot:
        title = f"{Path(args.trace).name}: {len(trace):,} requests, working set " + format_size(
            working_set
        )
        plot_miss_ratio_curves(results, args.plot, title)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print(format_table(results, len(trace), working_set))
        if args.plot:
            print(f"miss-ratio curves written to {args.plot}")
    return 0


def format_table(results: list[dict[str, Any]], requests: int, working_set: int) -> str:
    header = ("eviction", "capacity", "of WSS", "hit ratio", "byte hit ratio", "req/s")
    rows = [
        (
            r["eviction"],
            format_size(r["capacity_bytes"]),
            f"{r['capacity_bytes'] / working_set:.0%}" if working_set else "-",
            f"{r['hit_ratio']:.4f}",
            f"{r['byte_hit_ratio']:.4f}",
            f"{r['requests_per_second']:,.0f}",
        )
        for r in results
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = [
        f"{requests:,} requests, {len(results)} runs, working set {format_size(working_set)}",
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(header, widths, strict=True))
        ),
    ]
    for row in rows:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)
