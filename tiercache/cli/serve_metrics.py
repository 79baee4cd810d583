"""``tiercache serve-metrics``: a Prometheus exporter of one cache's node totals.

Runs as its own small process beside training jobs, so metrics outlive any one job and a
scrape sees every process's reads (see :mod:`tiercache.metrics`). It only reads shared
state; it never becomes the cache's engine.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..metrics import serve
from .common import add_config_args, config_from_args
from .stopping import stop_signals


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve-metrics",
        help="serve the cache's node-wide metrics for Prometheus until stopped",
        description="Serve /metrics for Prometheus until Ctrl-C or SIGTERM. The port and "
        "address default to the config's [metrics] port and bind (127.0.0.1).",
    )
    add_config_args(p)
    p.add_argument("--port", type=int, help="TCP port (0 picks a free one and prints it)")
    p.add_argument(
        "--bind",
        metavar="ADDR",
        help="address to listen on (default: [metrics] bind, else 127.0.0.1)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.port is None and config.metrics.port == 0:
        raise ValueError(f"{config.source}: no metrics port; give --port N or set [metrics] port")
    with stop_signals() as stop:  # close the socket, exit 0
        server = serve(config, port=args.port, bind=args.bind)
        try:
            print(f"serving metrics of {config.index_path} on {server.url}", flush=True)
            stop.wait()
        finally:
            server.close()
    print("metrics server stopped", file=sys.stderr, flush=True)
    return 0
