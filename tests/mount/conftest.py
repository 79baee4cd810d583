"""A real kernel FUSE mount of a moto bucket, served by ``python -m tiercache mount``.

The mount runs as a subprocess exactly as a user starts it; teardown always unmounts
(``fusermount3 -u``, then lazily) so a failing test never leaves a mount behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import S3

pytestmark = pytest.mark.timeout(120)


def _fuse_available() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if shutil.which("fusermount3") is None:
        return "fuse3 is not installed (apt-get install fuse3)"
    return None


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    reason = _fuse_available()
    if reason:
        for item in items:
            if "tests/mount/" in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason=reason))


def in_proc_mounts(mountpoint: Path) -> bool:
    """/proc/mounts, not os.path.ismount: stat on a dead FUSE mount hangs or errors."""
    target = str(mountpoint)
    with open("/proc/mounts") as f:
        return any(line.split()[1] == target for line in f if len(line.split()) > 1)


@dataclass
class Mount:
    """A running ``tiercache mount`` process and where it is mounted."""

    path: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def force_unmount(mountpoint: Path) -> None:
    if in_proc_mounts(mountpoint):
        subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True)
    if in_proc_mounts(mountpoint):
        subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True)


@pytest.fixture
def start_mount(s3_server: S3, tmp_path: Path) -> Iterator[Callable[..., Mount]]:
    """Start ``tiercache mount URL MOUNTPOINT --config <config>``; returns a :class:`Mount`."""
    started: list[Mount] = []

    def start(url: str, config: dict[str, Any], *extra: str, endpoint: str | None = None) -> Mount:
        n = len(started)
        mountpoint = Path(tempfile.mkdtemp(prefix=f"tiercache-mnt{n}-"))
        toml = tmp_path / f"mount{n}.toml"
        toml.write_text(_to_toml(config))
        log = tmp_path / f"mount{n}.log"
        env = {**os.environ, "AWS_ENDPOINT_URL": endpoint or s3_server.endpoint}
        cmd = [sys.executable, "-m", "tiercache", "mount", url, str(mountpoint),
               "--config", str(toml), "--log-file", str(log), *extra]  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        mount = Mount(mountpoint, proc, log)
        started.append(mount)
        deadline = time.monotonic() + 30
        while not in_proc_mounts(mountpoint):
            if proc.poll() is not None:
                out = proc.stderr.read().decode() if proc.stderr else ""
                raise AssertionError(f"mount exited {proc.returncode}: {out}")
            if time.monotonic() > deadline:
                raise AssertionError("mount did not appear in /proc/mounts within 30 s")
            time.sleep(0.05)
        return mount

    yield start
    for mount in started:
        if mount.proc.poll() is None:
            mount.proc.send_signal(signal.SIGTERM)
            try:
                mount.proc.wait(15)
            except subprocess.TimeoutExpired:
                mount.proc.kill()
                mount.proc.wait(5)
        force_unmount(mount.path)
        if not in_proc_mounts(mount.path):
            shutil.rmtree(mount.path, ignore_errors=True)


def _to_toml(config: dict[str, Any]) -> str:
    """The test config dict as TOML, the form users hand ``--config``."""
    lines: list[str] = []
    for tier in config["tiers"]:
        lines.append("[[tiers]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in tier.items()]
    for section, values in config.items():
        if section == "tiers":
            continue
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"
