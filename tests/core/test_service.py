"""``tiercache engine``: the node's engine as a service that every process uses while it runs,
takes over from an embedded engine, stops cleanly on SIGTERM and is survived when killed."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import S3, make_config, put_objects
from tests.metrics.helpers import write_toml
from tiercache import TierCacheFileSystem
from tiercache.service import MARKER

MiB = 1 << 20


class Service:
    """A ``tiercache engine --json`` process and its ready line."""

    def __init__(self, config_path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tiercache", "engine", "--config", str(config_path), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.ready = self._line(timeout=60)
        assert self.ready["event"] == "ready", self.ready

    def _line(self, timeout: float) -> dict[str, Any]:
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        if not box or not box[0]:
            self.proc.kill()
            _, err = self.proc.communicate()
            raise AssertionError(f"no status line from the engine service; stderr:\n{err}")
        return dict(json.loads(box[0]))

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str, str]:
        self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, out, err


@pytest.fixture
def service_setup(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, tmp_path: Path
) -> tuple[Path, dict[str, Any], dict[str, bytes]]:
    objs = {f"svc/{i}.bin": os.urandom(MiB + i) for i in range(8)}
    put_objects(s3_server, bucket, objs)
    config = make_config(cache_dirs)
    return write_toml(config, tmp_path / "cache.toml"), config, objs


def _fs(config: dict[str, Any], s3: S3) -> TierCacheFileSystem:
    return TierCacheFileSystem(config=config, target_protocol="s3", target_options=s3.options)


def _engine_pid(fs: TierCacheFileSystem) -> int:
    reply, _ = fs.cache.engine_call("ping")
    return int(reply["pid"])


def test_every_process_uses_the_service_and_sigterm_leaves_a_consistent_index(
    service_setup: tuple[Path, dict[str, Any], dict[str, bytes]], s3_server: S3, bucket: str
) -> None:
    toml, config, objs = service_setup
    service = Service(toml)
    index = Path(service.ready["index"])
    assert (index / MARKER).exists() and service.ready["socket"].endswith("engine.sock")
    fs = _fs(config, s3_server)
    names = sorted(objs)
    for name in names[:4]:
        assert fs.cat_file(f"{bucket}/{name}") == objs[name]
    assert not fs.cache.is_engine
    assert _engine_pid(fs) == service.proc.pid
    assert fs.stats()["misses"] == 4

    # Readers keep reading while the service is told to stop: every read gets exact bytes,
    # from the service or, once it is gone, from the engine this process then becomes.
    errors: list[BaseException] = []

    def read_rest() -> None:
        try:
            for _ in range(3):
                for name in names:
                    data = fs.cat_file(f"{bucket}/{name}")
                    assert hashlib.sha256(data).digest() == hashlib.sha256(objs[name]).digest()
        except BaseException as exc:  # reported below
            errors.append(exc)

    reader = threading.Thread(target=read_rest)
    reader.start()
    code, out, err = service.stop(signal.SIGTERM)
    reader.join(120)
    assert not errors, errors
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["event"] == "stopped"
    assert not (index / MARKER).exists()
    # A read after the service is gone (the reader may have finished before it stopped)
    # makes this process the engine.
    assert fs.cat_file(f"{bucket}/{names[0]}") == objs[names[0]]
    report = fs.cache.engine.verify()  # this process is the engine now
    assert report["ok"], report["problems"]


def test_the_service_takes_over_from_an_embedded_engine_and_is_survived_when_killed(
    service_setup: tuple[Path, dict[str, Any], dict[str, bytes]], s3_server: S3, bucket: str
) -> None:
    toml, config, objs = service_setup
    names = sorted(objs)
    fs = _fs(config, s3_server)
    assert fs.cat_file(f"{bucket}/{names[0]}") == objs[names[0]]
    assert fs.cache.is_engine  # the embedded default: the first process to need it

    service = Service(toml)  # asks this process to hand over, and waits for the lock
    assert not fs.cache.is_engine
    assert fs.cat_file(f"{bucket}/{names[1]}") == objs[names[1]]
    assert _engine_pid(fs) == service.proc.pid

    service.stop(signal.SIGKILL)  # its marker stays behind, naming a dead process
    assert fs.cat_file(f"{bucket}/{names[2]}") == objs[names[2]]
    assert fs.cache.is_engine
    assert fs.cache.engine.verify()["ok"]


def test_a_second_service_for_the_same_cache_is_refused(
    service_setup: tuple[Path, dict[str, Any], dict[str, bytes]],
) -> None:
    toml, _, _ = service_setup
    service = Service(toml)
    second = subprocess.run(
        [sys.executable, "-m", "tiercache", "engine", "--config", str(toml)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert f"pid {service.proc.pid}" in second.stderr and "already runs" in second.stderr
    code, _, _ = service.stop()
    assert code == 0


def test_clients_wait_for_a_live_service_instead_of_electing_themselves(
    service_setup: tuple[Path, dict[str, Any], dict[str, bytes]], s3_server: S3, bucket: str
) -> None:
    """While the service is paused (a restart, a slow start), a client must not take the
    lock the service holds or will need: it waits, and is served once the service answers."""
    toml, config, objs = service_setup
    service = Service(toml)
    name = sorted(objs)[0]
    os.kill(service.proc.pid, signal.SIGSTOP)
    try:
        fs = _fs(config, s3_server)
        result: list[bytes] = []
        reader = threading.Thread(target=lambda: result.append(fs.cat_file(f"{bucket}/{name}")))
        reader.start()
        time.sleep(1.0)
        assert reader.is_alive() and not fs.cache.is_engine
    finally:
        os.kill(service.proc.pid, signal.SIGCONT)
    reader.join(60)
    assert result == [objs[name]]
    assert not fs.cache.is_engine
    assert service.stop()[0] == 0
