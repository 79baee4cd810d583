"""Helpers for the metrics tests: configs as TOML files, scraping, a workload with known answers."""

from __future__ import annotations

import os
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import S3, make_config
from tiercache import TierCacheFileSystem

#: (sample name, sorted label items) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def fs_for(dirs: dict[str, Path], s3: S3, **kw: Any) -> Any:
    return TierCacheFileSystem(
        config=make_config(dirs, **kw), target_protocol="s3", target_options=s3.options
    )


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return parse(resp.read().decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of ``name`` over every series whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, items), v in samples.items() if n == name and want <= set(items))


def write_toml(config: dict[str, Any], path: Path) -> Path:
    """Just enough TOML for ``make_config``'s shape: tables, one array of tables, scalars."""

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines: list[str] = []
    for key, v in config.items():
        if not isinstance(v, dict | list):
            lines.append(f"{key} = {scalar(v)}")
    for key, v in config.items():
        if isinstance(v, dict):
            lines.append(f"[{key}]")
            lines += [f"{k} = {scalar(x)}" for k, x in v.items()]
        elif isinstance(v, list):
            for item in v:
                lines.append(f"[[{key}]]")
                lines += [f"{k} = {scalar(x)}" for k, x in item.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.1)


def tier_of(fs: Any, bucket: str, key: str) -> int | None:
    entry = fs.cache.index.get(f"s3://{bucket}/{key}")
    return None if entry is None else int(entry.tier)


def env_with_repo() -> dict[str, str]:
    """Environment for ``python -m tiercache`` subprocesses: this checkout importable."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env
