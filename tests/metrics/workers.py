"""Code run in spawned processes (it must be importable by name, not defined in a test)."""

from __future__ import annotations

from typing import Any


def read_through(
    config: dict[str, Any], options: dict[str, Any], paths: list[str], repeats: int
) -> None:
    """Read ``paths`` ``repeats`` times through the shared cache, then hand over cleanly."""
    from tiercache import TierCacheFileSystem
    from tiercache.cache import close_all

    fs = TierCacheFileSystem(config=config, target_protocol="s3", target_options=options)
    for _ in range(repeats):
        for path in paths:
            fs.cat_file(path)
    close_all()
