"""Child processes for the kill and takeover tests (run under multiprocessing's forkserver,
so each start is a fork of a process that has already imported tiercache and s3fs).

Every read is checked against the origin's digest; a wrong byte or an error is appended to
a shared log (one ``write`` per line on an O_APPEND descriptor, so lines from processes
killed mid-run never interleave), which the test reads at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from pathlib import Path
from typing import Any


def toml(config: dict[str, Any]) -> str:
    """A cache config dict as TOML (enough for ``make_config``'s shape), for the CLI."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, value in config.items():
        if key == "tiers":
            continue
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    for tier in config["tiers"]:
        lines.append("[[tiers]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in tier.items()]
    for name, table in tables:
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _log(path: str, record: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def churn(
    config: dict[str, Any], options: dict[str, Any], digests: dict[str, str], problems: str
) -> None:
    """Read forever: whole objects, ranges, hints (prefetch), so the engine wherever it
    runs is fetching, evicting, demoting and promoting all the time. Killed by the test."""
    from tiercache import TierCacheFileSystem

    fs = TierCacheFileSystem(config=config, target_protocol="s3", target_options=options)
    rng = random.Random(os.getpid())
    paths = list(digests)
    while True:
        path = rng.choice(paths)
        try:
            roll = rng.random()
            if roll < 0.6:
                data = fs.cat_file(path)
                if hashlib.sha256(data).hexdigest() != digests[path]:
                    _log(problems, {"pid": os.getpid(), "path": path, "problem": "wrong bytes"})
            elif roll < 0.95:
                with fs.open(path) as f:
                    f.seek(rng.randrange(max(1, f.size)))
                    f.read(4096)
            else:
                fs.hint(rng.sample(paths, 4))
        except Exception as exc:
            _log(problems, {"pid": os.getpid(), "path": path, "problem": repr(exc)})


def reader(
    config: dict[str, Any],
    options: dict[str, Any],
    digests: dict[str, str],
    problems: str,
    stop: str,
    result: str,
) -> None:
    """Read and check until ``stop`` exists; then write counts and times to ``result``."""
    from tiercache import TierCacheFileSystem

    fs = TierCacheFileSystem(config=config, target_protocol="s3", target_options=options)
    rng = random.Random(os.getpid())
    paths = list(digests)
    reads, errors, first, last = 0, 0, 0.0, 0.0
    while not Path(stop).exists():
        path = rng.choice(paths)
        try:
            data = fs.cat_file(path)
        except Exception as exc:
            errors += 1
            _log(problems, {"pid": os.getpid(), "path": path, "problem": repr(exc)})
            continue
        if hashlib.sha256(data).hexdigest() != digests[path]:
            errors += 1
            _log(problems, {"pid": os.getpid(), "path": path, "problem": "wrong bytes"})
            continue
        reads += 1
        last = time.time()
        first = first or last
    fs.cache.flush_access()
    out = {"pid": os.getpid(), "reads": reads, "errors": errors, "first": first, "last": last}
    Path(result).write_text(json.dumps(out))
