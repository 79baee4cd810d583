"""``tiercache engine``: the node's engine as a foreground service (systemd, Kubernetes).

Without it, the engine runs inside whichever process first needs it: a training rank, or a
DataLoader worker that then rebuilds it every epoch. As a service it runs on CPUs of its own,
outlives jobs, and every process on the node that opens the same cache uses it. It takes
over from an engine embedded in a running process (which hands over cleanly and carries on
as a client), logs to stderr, prints one status line when ready (``--json`` for scripts),
and on SIGTERM or Ctrl-C finishes the requests it is serving, flushes its state and exits
with the index consistent.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from typing import Any

from ..cache import open_cache
from ..config import Config
from ..metrics import serve_if_configured
from ..service import ServiceRunning, live_service, remove_marker, write_marker
from .common import add_config_args, config_from_args
from .stopping import Stop, stop_signals

log = logging.getLogger("tiercache.service")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "engine",
        help="run the node's cache engine as a service until stopped",
        description="Run the engine for one cache directory in the foreground until SIGTERM "
        "or Ctrl-C. While it runs, every process on the node that opens this cache uses it. "
        "Serves Prometheus metrics too when the config's [metrics] port is set.",
    )
    add_config_args(p)
    p.add_argument("--json", action="store_true", help="status lines on stdout as JSON")
    p.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="what goes to stderr (default: info)",
    )
    p.add_argument(
        "--takeover-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long an engine running in another process gets to hand over (default: 60)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    other = live_service(config.index_path)
    if other is not None:
        raise ServiceRunning(
            f"a tiercache engine service (pid {other}) already runs for {config.index_path}"
        )
    with stop_signals() as stop:
        return _serve(args, config, stop)


def _serve(args: argparse.Namespace, config: Config, stop: Stop) -> int:
    started = time.monotonic()
    cache = open_cache(config)  # makes the index directory
    write_marker(config.index_path)
    cache.is_service = True
    metrics = None
    try:
        cache.take_over(timeout=args.takeover_timeout)
        metrics = serve_if_configured(config)
        engine = cache.engine
        cluster = engine.cluster.status(wait=30.0) if engine and engine.cluster else None
        totals = cache.index.totals()
        _status(
            args.json,
            {
                "event": "ready",
                "pid": os.getpid(),
                "index": str(config.index_path),
                "socket": str(config.index_path / "engine.sock"),
                "config": config.source,
                "tiers": totals,
                "metrics": metrics.url if metrics is not None else None,
                "cluster": cluster,
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        engine = cache.engine
        assert engine is not None

        def report_started() -> None:
            # Start-up (policy replay, reconciliation) runs in the background while the
            # engine already serves; say when it is done, for scripts and benchmarks.
            engine.wait_started()
            if not stop.is_set():
                _status(
                    args.json,
                    {
                        "event": "reconciled",
                        "pid": os.getpid(),
                        "report": engine.reconciled_at_start,
                        "seconds": round(time.monotonic() - started, 3),
                    },
                )

        threading.Thread(target=report_started, name="tiercache-report", daemon=True).start()
        stop.wait()
        log.info("stopping: finishing requests in flight")
    finally:
        # Withdraw the marker first: clients turned away while this engine drains may then
        # take the lock the moment it is released, instead of waiting for this process.
        remove_marker(config.index_path)
        if metrics is not None:
            metrics.close()
        cache.close(wait=True)
    _status(args.json, {"event": "stopped", "pid": os.getpid()})
    return 0


def _status(as_json: bool, status: dict[str, Any]) -> None:
    if as_json:
        print(json.dumps(status), flush=True)
        return
    if status["event"] == "reconciled":
        print(
            f"tiercache engine start-up done in {status['seconds']} s: {status['report']}",
            flush=True,
        )
        return
    if status["event"] == "ready":
        tiers = ", ".join(f"{name} {t['entries']} entries" for name, t in status["tiers"].items())
        print(
            f"tiercache engine ready (pid {status['pid']}) for {status['index']} in "
            f"{status['seconds']} s: {tiers}",
            flush=True,
        )
    else:
        print(f"tiercache engine stopped (pid {status['pid']})", flush=True)
