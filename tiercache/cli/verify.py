"""``tiercache verify [--repair]``: check every cached blob and the index agree."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..cache import open_cache
from .common import add_config_args, config_from_args


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "verify",
        help="check blobs, checksums, totals and orphans; --repair fixes them",
        description="Exit status 0 when the cache is consistent (or was repaired), 1 if not.",
    )
    add_config_args(p)
    p.add_argument(
        "--repair", action="store_true", help="drop bad entries, delete orphans, recompute totals"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    reply, _ = open_cache(config).engine_call("verify", repair=args.repair)
    report = reply["report"]
    if args.json:
        print(json.dumps(report))
    else:
        state = (
            "consistent" if report["ok"] else ("repaired" if report["repaired"] else "INCONSISTENT")
        )
        print(f"{report['entries']} entries checked: {state}")
        for problem in report["problems"]:
            print(f"  {problem}")
        fixed = {k: v for k, v in report.get("reconciled_at_start", {}).items() if v}
        if fixed:
            done = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in fixed.items())
            print(f"  fixed when the engine started: {done}")
        for name, tier in report["tiers"].items():
            print(f"  {name}: {tier['entries']} entries, {tier['used_bytes']} bytes")
    return 0 if report["ok"] or report["repaired"] else 1
