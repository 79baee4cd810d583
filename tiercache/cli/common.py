"""Options every subcommand that opens a cache shares: ``--config FILE`` or ``--policy NAME``.

One helper keeps the spelling, the help text and the precedence identical across commands,
so ``tiercache stats --policy training`` and ``tiercache warm --policy training`` mean the
same cache.
"""

from __future__ import annotations

import argparse

from ..config import ENV_VAR, Config, load_config, preset_names


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """Add the mutually exclusive ``--config FILE`` / ``--policy NAME`` options."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--config",
        metavar="FILE",
        help=f"cache config (TOML); default: ${ENV_VAR}, else the 'default' policy",
    )
    group.add_argument(
        "--policy",
        metavar="NAME",
        help=f"a ready policy preset by name or TOML path (presets: {', '.join(preset_names())})",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    """The config the user chose: ``--config``, else ``--policy``, else the environment default.

    ``load_config`` already accepts a path or a preset name and raises ``ConfigError`` (a
    ``ValueError``) naming what is wrong, which the CLI prints as one line.
    """
    source = getattr(args, "config", None) or getattr(args, "policy", None)
    return load_config(source)
