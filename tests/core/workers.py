"""Functions run in child processes by the multi-process tests (importable under spawn)."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from typing import Any


def read_at(
    config: dict[str, Any], options: dict[str, Any], paths: list[str], start_at: float
) -> dict[str, str]:
    """Wait until ``start_at`` so every process misses at once, then read ``paths``."""
    from tiercache import TierCacheFileSystem

    fs = TierCacheFileSystem(config=config, target_protocol="s3", target_options=options)
    time.sleep(max(0.0, start_at - time.time()))
    out = {p: hashlib.sha256(fs.cat_file(p)).hexdigest() for p in paths}
    fs.cache.flush_access()
    return out


def fill_forever(config: dict[str, Any], options: dict[str, Any], paths: list[str]) -> None:
    """Read (and so fetch, evict, demote and promote) in a loop until killed."""
    import random

    from tiercache import TierCacheFileSystem

    fs = TierCacheFileSystem(config=config, target_protocol="s3", target_options=options)
    rng = random.Random(os.getpid())
    print("ready", flush=True)
    while True:
        path = rng.choice(paths)
        if rng.random() < 0.5:
            fs.cat_file(path)
        else:
            with fs.open(path) as f:
                f.seek(rng.randrange(max(1, f.size)))
                f.read(4096)


def engine_until_told(config: dict[str, Any], options: dict[str, Any]) -> None:
    """Become the engine, serve until a line arrives on stdin, then exit normally."""
    from tiercache import TierCacheFileSystem

    fs = TierCacheFileSystem(config=config, target_protocol="s3", target_options=options)
    assert fs.cache.engine is not None and fs.cache.is_engine
    print("ready", flush=True)
    sys.stdin.readline()
    sys.exit(0)  # atexit hands the engine over


def hint_and_wait(
    config: dict[str, Any], options: dict[str, Any], paths: list[str], stream: str = ""
) -> None:
    """Hint ``paths`` (without reading them), say so, then wait until told (a line on
    stdin) or killed: a rank whose sampler has planned its epoch."""
    from tiercache import TierCacheFileSystem

    fs = TierCacheFileSystem(config=config, target_protocol="s3", target_options=options)
    fs.hint(paths, stream=stream)
    print("hinted", flush=True)
    sys.stdin.readline()


if __name__ == "__main__":
    import json

    args = json.loads(sys.argv[1])
    if args.get("mode") == "engine":
        engine_until_told(args["config"], args["options"])
    elif args.get("mode") == "hint":
        hint_and_wait(args["config"], args["options"], args["paths"], args.get("stream", ""))
    else:
        fill_forever(args["config"], args["options"], args["paths"])
