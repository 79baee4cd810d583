"""``tiercache warm URL...``: fetch objects into the cache ahead of a job, concurrently."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import fsspec

from ..fs import TierCacheFileSystem
from ..sizes import format_size
from .common import (
    add_config_args,
    add_origin_args,
    config_from_args,
    origin_from_url,
    target_options,
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "warm",
        help="fetch objects or whole prefixes into the cache",
        description="Fetch objects (URLs, prefixes, or globs such as s3://bucket/train/*.bin) "
        "into the cache with concurrent origin reads. The S3 endpoint may come from "
        "AWS_ENDPOINT_URL.",
    )
    p.add_argument("urls", nargs="+", metavar="URL")
    add_config_args(p)
    add_origin_args(p)
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="parallel origin reads (default: [origin] concurrency)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def origin_files(url: str, options: dict[str, Any]) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """The origin filesystem of ``url`` and every file the URL names (prefixes recurse)."""
    fs, path = origin_from_url(url, options)
    if any(c in path for c in "*?["):
        files = [p for p in fs.glob(path) if fs.isfile(p)]
    elif fs.isdir(path):
        files = fs.find(path)
    elif fs.exists(path):
        files = [path]
    else:
        raise FileNotFoundError(f"nothing at {url}")
    return fs, files


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    options = target_options(args)
    started = time.perf_counter()
    totals: dict[str, Any] = {"objects": 0, "bytes": 0, "errors": {}}
    for url in args.urls:
        origin, files = origin_files(url, options)
        fs = TierCacheFileSystem(config=config, fs=origin)
        done = fs.warm(files, progress=not args.json, on_error="omit", concurrency=args.concurrency)
        totals["objects"] += done["objects"]
        totals["bytes"] += done["bytes"]
        totals["errors"].update(done["errors"])
    seconds = time.perf_counter() - started
    totals["seconds"] = round(seconds, 3)
    totals["bytes_per_s"] = totals["bytes"] / seconds if seconds else 0.0
    if args.json:
        print(json.dumps(totals))
    else:
        print(
            f"warmed {totals['objects']} objects, {format_size(totals['bytes'])} in "
            f"{seconds:.1f} s ({format_size(totals['bytes_per_s'])}/s)"
        )
        for path, error in totals["errors"].items():
            print(f"  failed: {path}: {error}")
    return 1 if totals["errors"] else 0
