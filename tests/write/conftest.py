"""Fixtures for the write-tier tests: moto (HTTP on loopback) behind the fault proxy, a
cache whose write tier is small enough for MiB-sized tests, and worker processes."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import S3, make_config
from tests.reliability.conftest import origin_fs
from tests.reliability.faultproxy import FaultProxy, wait_until

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]
PART = 5 * MiB  # S3's smallest part: multipart tests stay small


def write_config(dirs: dict[str, Path], **write: Any) -> dict[str, Any]:
    """The two test tiers plus a write tier: 5 MiB parts, 64 MiB of staging, short waits."""
    settings = {
        "capacity": "64MiB",
        "part_size": PART,
        "upload_concurrency": 4,
        "wait_seconds": 5,
        "exit_wait_seconds": 2,
        **write,
    }
    return make_config(dirs, ssd="64MiB", write=settings, origin={"retries": 2})


@pytest.fixture
def proxy(s3_server: S3) -> Iterator[FaultProxy]:
    p = FaultProxy(s3_server.endpoint)
    yield p
    p.close()


def cache_over(config: dict[str, Any], endpoint: str) -> Any:
    from tiercache import TierCacheFileSystem

    return TierCacheFileSystem(config=config, fs=origin_fs(endpoint))


@pytest.fixture
def wfs(cache_dirs: dict[str, Path], proxy: FaultProxy) -> Any:
    """A cache with a write tier whose origin is moto behind the fault proxy."""
    fs = cache_over(write_config(cache_dirs), proxy.endpoint)
    fs.config_dict = write_config(cache_dirs)
    return fs


def object_bytes(s3: S3, bucket: str, key: str) -> bytes | None:
    try:
        return bytes(s3.client.get_object(Bucket=bucket, Key=key)["Body"].read())
    except s3.client.exceptions.NoSuchKey:
        return None


def keys(s3: S3, bucket: str, prefix: str = "") -> list[str]:
    listed = s3.client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return sorted(o["Key"] for o in listed)


def upload_parts(proxy: FaultProxy, key: str) -> int:
    """UploadPart requests for ``key`` the proxy forwarded (faulted ones not counted)."""
    return sum(
        1
        for s in proxy.requests("PUT", key)
        if "partNumber=" in s.query and s.fault in ("ok", "slow")
    )


@dataclass
class Worker:
    """A worker process (``tests/write/workers.py``) and the events it printed (read by a
    thread as they come)."""

    proc: subprocess.Popen[str]
    events: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))

    def poll(self) -> list[dict[str, Any]]:
        return self.events

    def wait_for(self, event: str, timeout: float = 60.0) -> dict[str, Any]:
        def seen() -> bool:
            if any(e["event"] == event for e in self.events):
                return True
            if self.proc.poll() is not None:
                self._reader.join(timeout=10)  # what it printed before it exited
                if any(e["event"] == event for e in self.events):
                    return True
                raise AssertionError(f"worker exited ({self.proc.returncode}) before {event!r}")
            return False

        assert wait_until(seen, timeout), f"no {event!r} from worker in {timeout} s"
        return next(e for e in self.events if e["event"] == event)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture
def workers() -> Iterator[Any]:
    started: list[Worker] = []

    def start(command: str, spec: dict[str, Any]) -> Worker:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.write.workers", command, json.dumps(spec)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        worker = Worker(proc)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()
