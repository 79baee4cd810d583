"""What every benchmark needs: a moto S3 server in its own process, uploads, and reporting.

moto runs as a separate process (as the demo runs it) so that its CPU time does not
share the benchmark's interpreter lock; everything still crosses real HTTP on loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server in its own process (``tiercache.demo.server``); yields its endpoint."""
    from tiercache.demo.server import start_s3_server

    os.environ.update(CREDENTIALS)
    with start_s3_server() as server:
        yield server.endpoint


def s3_options(endpoint: str) -> dict[str, Any]:
    return {"endpoint_url": endpoint, "key": "bench", "secret": "bench"}


def upload(endpoint: str, bucket: str, objects: dict[str, bytes]) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=bucket)
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda kv: client.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), objects.items()
            )
        )


def engine_cpu_seconds() -> float:
    """CPU seconds (user + system) spent so far by this process's tiercache threads (the
    engine's fetches, moves, connections, prefetch, housekeeping), read per thread from
    /proc: what a training process that hosts the engine gives to it."""
    import threading

    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for thread in threading.enumerate():
        if not thread.name.startswith("tiercache") or thread.native_id is None:
            continue
        try:
            with open(f"/proc/self/task/{thread.native_id}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def process_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def timed(fn: Any, *args: Any) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def best_of(n: int, fn: Any, *args: Any) -> float:
    """The fastest of ``n`` runs: on a shared, noisy machine the minimum is the signal."""
    return min(timed(fn, *args) for _ in range(n))


def report(
    title: str,
    rows: list[dict[str, Any]],
    columns: list[str],
    as_json: bool,
    extra: dict[str, Any] | None = None,
) -> None:
    """Print JSON (``--json``) or a readable table of ``rows``."""
    if as_json:
        print(json.dumps({"benchmark": title, "results": rows, **(extra or {})}, indent=2))
        return
    print(f"\n{title}")
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths, strict=True)))
    for key, value in (extra or {}).items():
        print(f"{key}: {value}")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    return "" if v is None else str(v)
