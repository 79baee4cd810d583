"""``tiercache clear``: drop cached data (one tier or all). The origin keeps everything."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..cache import open_cache
from ..sizes import format_size
from .common import add_config_args, config_from_args


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("clear", help="drop cached data from one tier or all")
    add_config_args(p)
    p.add_argument("--tier", metavar="NAME", help="only this tier (default: every tier)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.tier:
        config.tier(args.tier)  # names the valid tiers if this one is wrong
    reply, _ = open_cache(config).engine_call("clear", tier=args.tier)
    report = reply["report"]
    if args.json:
        print(json.dumps(report))
    else:
        where = f"tier {args.tier}" if args.tier else "all tiers"
        print(f"cleared {report['entries']} entries ({format_size(report['bytes'])}) from {where}")
    return 0
