"""Processes the write-tier tests start and kill: an engine host, writers, a DCP saver.

Run as ``python -m tests.write.workers <command> <json>``; each prints one JSON line per
event on stdout (flushed), which the test reads to know when to kill it. A writer appends
every acknowledged file (path and SHA-256) to a log with one ``write`` per line on an
O_APPEND descriptor, fsynced, *after* ``close()`` returned: exactly the files the test
may expect at the origin, whatever instant the writer is killed at.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
from typing import Any


def _say(**event: Any) -> None:
    print(json.dumps(event), flush=True)


def _fs(spec: dict[str, Any]) -> Any:
    from tests.reliability.conftest import origin_fs
    from tiercache import TierCacheFileSystem

    origin = origin_fs(spec["endpoint"], read_timeout=spec.get("read_timeout", 5.0))
    origin.retries = spec.get("s3fs_retries", 1)
    return TierCacheFileSystem(config=spec["config"], fs=origin)


def _ack(log: str, record: dict[str, Any]) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def engine(spec: dict[str, Any]) -> None:
    """Become the cache's engine (and so its uploader) and stay until killed."""
    fs = _fs(spec)
    assert fs.cache.engine is not None and fs.cache.is_engine, "another process is the engine"
    _say(event="engine", pid=os.getpid())
    while True:
        time.sleep(1)


def write(spec: dict[str, Any]) -> None:
    """Write ``spec["files"]`` ([path, size, seed]) one after another, acknowledging each."""
    fs = _fs(spec)
    for path, size, seed in spec["files"]:
        data = random.Random(seed).randbytes(size)
        with fs.open(path, "wb") as f:
            for start in range(0, size, 1 << 20):
                f.write(data[start : start + (1 << 20)])
        _ack(spec["log"], {"path": path, "sha256": hashlib.sha256(data).hexdigest()})
        _say(event="closed", path=path)
    _say(event="done")
    if spec.get("linger"):
        while True:
            time.sleep(1)


def write_and_hang(spec: dict[str, Any]) -> None:
    """Write ``spec["size"]`` bytes of a file and keep it open (to be killed mid-write)."""
    fs = _fs(spec)
    f = fs.open(spec["path"], "wb")
    f.write(random.Random(1).randbytes(spec["size"]))
    _say(event="written")
    while True:
        time.sleep(1)
    f.close()  # never reached


def churn(spec: dict[str, Any]) -> None:
    """Write files of random sizes under unique names until killed (the SIGKILL soak)."""
    fs = _fs(spec)
    rng = random.Random(spec["seed"])
    n = 0
    while True:
        size = rng.choice([3_000, 200_000, 6 << 20, 11 << 20])
        data = rng.randbytes(size)
        path = f"{spec['prefix']}/{os.getpid()}-{n:04d}.bin"
        n += 1
        with fs.open(path, "wb") as f:
            f.write(data)
        _ack(spec["log"], {"path": path, "sha256": hashlib.sha256(data).hexdigest()})
        _say(event="closed", path=path)


def dcp_save(spec: dict[str, Any]) -> None:
    """Save a state dict with PyTorch DCP through tiercache, then linger (to be killed)."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

    state = {f"w{i}": torch.full((spec["numel"],), float(i)) for i in range(spec["tensors"])}
    s3 = {"endpoint_url": spec["endpoint"], "key": "testing", "secret": "testing"}
    writer = FsspecWriter(spec["url"], sync_files=True, tiercache={"config": spec["config"]}, s3=s3)
    dcp.save(state, storage_writer=writer, no_dist=True)
    _say(event="saved")
    while True:
        time.sleep(1)


if __name__ == "__main__":
    command, argument = sys.argv[1], json.loads(sys.argv[2])
    {
        "engine": engine,
        "write": write,
        "write_and_hang": write_and_hang,
        "churn": churn,
        "dcp_save": dcp_save,
    }[command](argument)
