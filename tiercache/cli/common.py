"""Options every subcommand that opens a cache shares: ``--config FILE`` or ``--policy NAME``.

One helper keeps the spelling, the help text and the precedence identical across commands,
so ``tiercache stats --policy training`` and ``tiercache warm --policy training`` mean the
same cache.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import fsspec

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


def add_origin_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--target-options JSON``: options for the origin filesystem of a URL."""
    parser.add_argument(
        "--target-options",
        metavar="JSON",
        default="{}",
        help='origin filesystem options, e.g. \'{"endpoint_url": "http://..."}\'',
    )


def target_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--target-options`` parsed, with an error naming the flag if it is not a JSON object."""
    try:
        options = json.loads(args.target_options)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--target-options is not valid JSON: {exc}") from None
    if not isinstance(options, dict):
        raise ValueError("--target-options must be a JSON object")
    return options


def origin_from_url(url: str, options: dict[str, Any]) -> tuple[fsspec.AbstractFileSystem, str]:
    """The origin filesystem of ``url`` (``tiercache::`` allowed) and the path within it;
    for S3 the endpoint may come from ``AWS_ENDPOINT_URL``."""
    from ..fs import origin_options

    url = url.removeprefix("tiercache::")
    protocol = fsspec.core.split_protocol(url)[0] or "file"
    fs, path = fsspec.core.url_to_fs(url, **origin_options(protocol, options))
    return fs, path
