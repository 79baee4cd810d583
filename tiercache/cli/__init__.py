"""The ``tiercache`` command. Each subcommand lives in its own module with a ``register``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: Subcommand modules, in the order ``--help`` lists them. Each defines
#: ``register(subparsers) -> None``, which adds a parser whose ``func(args) -> int`` runs it.
COMMANDS = (
    "demo",
    "engine",
    "warm",
    "stats",
    "uploads",
    "clear",
    "verify",
    "simulate",
    "serve_metrics",
    "mount",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tiercache",
        description="Tiered cache (RAM, SSD, object storage) for training data.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"tiercache.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"tiercache.cli.{name}":
                continue  # not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError, PermissionError, OSError) as exc:
        # Bad input reaches the user as one clear line, not a traceback.
        print(f"tiercache: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
