"""Shared fixtures: a real S3-compatible server (moto, HTTP on loopback) and cache configs.

Nothing here mocks S3 in-process: s3fs talks HTTP to ``ThreadedMotoServer``, exactly the
path a user's code takes against real S3. moto's request recorder counts what reached it.
"""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import json
import os
import shutil
import signal
import tempfile
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Before moto is imported: record every request so tests can count origin GETs. The
# recording holds request bodies (a run's is about 1 GB): removed when the run ends.
os.environ.setdefault("MOTO_ENABLE_RECORDING", "True")
if "MOTO_RECORDER_FILEPATH" not in os.environ:
    _recordings = tempfile.mkdtemp(prefix="moto-rec-")
    os.environ["MOTO_RECORDER_FILEPATH"] = os.path.join(_recordings, "rec.jsonl")
    _recorder_pid = os.getpid()  # a forked child that exits normally must not remove it

    @atexit.register
    def _remove_recordings() -> None:
        if os.getpid() == _recorder_pid:
            shutil.rmtree(_recordings, ignore_errors=True)


os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


# pytest-timeout prints the stacks of the test's own process only. Forked children (DataLoader
# workers) inherit this handler: sent SIGUSR1, they print every thread's stack to the test's
# captured stderr, so a hung worker shows where it hangs.
faulthandler.register(signal.SIGUSR1, all_threads=True)
#: Seconds after which a still-running test has its forked children print their stacks;
#: pytest-timeout (pyproject.toml) stops it at 300.
_DUMP_CHILDREN_AFTER = 240.0


def _forked_children() -> list[int]:
    """Child processes of this one that run its command line (forks, not moto or spawns)."""
    me = os.getpid()
    with open("/proc/self/cmdline", "rb") as f:
        cmdline = f.read()
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                same = f.read() == cmdline
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me and same:
            children.append(int(entry))
    return children


@pytest.fixture(autouse=True)
def _stacks_of_hung_children() -> Iterator[None]:
    def dump() -> None:
        for pid in _forked_children():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGUSR1)

    timer = threading.Timer(_DUMP_CHILDREN_AFTER, dump)
    timer.daemon = True
    timer.start()
    yield
    timer.cancel()


@dataclass
class S3:
    """A running S3-compatible endpoint and a boto3 client for arranging test data."""

    endpoint: str
    client: Any

    @property
    def options(self) -> dict[str, Any]:
        """s3fs options (``target_options``) that reach this endpoint."""
        return {"endpoint_url": self.endpoint, "key": "testing", "secret": "testing"}

    def _recorder(self, action: str) -> bytes:
        url = f"{self.endpoint}/moto-api/recorder/{action}"
        method = "GET" if action == "download-recording" else "POST"
        with urllib.request.urlopen(urllib.request.Request(url, method=method)) as resp:
            return resp.read()

    def start_counting(self) -> None:
        self._recorder("reset-recording")
        self._recorder("start-recording")

    def requests(self, method: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
        """Requests the server received since :meth:`start_counting`, optionally filtered."""
        lines = self._recorder("download-recording").decode().splitlines()
        out = []
        for line in lines:
            if not line.strip():
                continue
            req = json.loads(line)
            if req.get("url", "").find("/moto-api/") >= 0:
                continue
            if method and req.get("method") != method:
                continue
            if key and not req.get("url", "").split("?")[0].endswith("/" + key):
                continue
            out.append(req)
        return out


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3]:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint)
    yield S3(endpoint, client)
    server.stop()


@pytest.fixture
def bucket(s3_server: S3) -> str:
    """A fresh, empty bucket for one test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_server.client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def cache_dirs() -> Iterator[dict[str, Path]]:
    """A RAM tier in /dev/shm (memory-backed, as in production) and an SSD tier on disk."""
    token = uuid.uuid4().hex[:12]
    ram = Path("/dev/shm") / f"tiercache-test-{token}"
    ssd = Path(tempfile.mkdtemp(prefix="tiercache-ssd-"))
    yield {"ram": ram, "ssd": ssd}
    from tiercache.cache import close_all
    from tiercache.fs import TierCacheFileSystem

    close_all()
    TierCacheFileSystem.clear_instance_cache()
    shutil.rmtree(ram, ignore_errors=True)
    shutil.rmtree(ssd, ignore_errors=True)


def make_config(
    dirs: dict[str, Path], ram: str | int = "8MiB", ssd: str | int = "32MiB", **extra: Any
) -> dict[str, Any]:
    """A two-tier config dict in ``dirs``; ``extra`` sections/keys override the defaults."""
    tier_extra = extra.pop("tier_extra", {})
    config: dict[str, Any] = {
        "tiers": [
            {
                "name": "ram",
                "path": str(dirs["ram"]),
                "capacity": ram,
                "eviction": "lru",
                "verify": "on-change",
                **tier_extra.get("ram", {}),
            },
            {
                "name": "ssd",
                "path": str(dirs["ssd"] / "ssd"),
                "capacity": ssd,
                "eviction": "lru",
                **tier_extra.get("ssd", {}),
            },
        ],
        "validation": {"mode": "ttl", "ttl_seconds": 60},
    }
    config.update(extra)
    return config


@pytest.fixture
def config(cache_dirs: dict[str, Path]) -> dict[str, Any]:
    return make_config(cache_dirs)


@pytest.fixture
def tcfs(config: dict[str, Any], s3_server: S3) -> Any:
    """A TierCacheFileSystem over the moto server with the default two-tier test config."""
    from tiercache import TierCacheFileSystem

    return TierCacheFileSystem(
        config=config, target_protocol="s3", target_options=s3_server.options
    )


def put_objects(s3: S3, bucket: str, objects: dict[str, bytes]) -> None:
    for key, body in objects.items():
        s3.client.put_object(Bucket=bucket, Key=key, Body=body)
