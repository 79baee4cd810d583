"""Hostile keys, file modes, foreign or shared cache directories, secrets, metrics binding.

Keys that S3 (or moto) will not store are served from a ``memory://`` or ``file://`` origin
instead: the cache treats every origin the same way, by the key's digest.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import traceback
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from tests.conftest import S3, make_config
from tests.reliability.conftest import origin_fs
from tests.reliability.faultproxy import Fault, FaultProxy
from tests.reliability.workers import toml
from tiercache import TierCacheFileSystem
from tiercache.origin import OriginError
from tiercache.security import UnsafeCacheDirError

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]

HOSTILE = [
    "../../../../etc/passwd",
    "a/../../../../../tmp/escaped",
    "/absolute/path",
    "//double//slashes//",
    "q/..",
    "nul\x00byte",
    "new\nline",
    "back\\slash\\..\\..\\x",
    "%2e%2e%2f%2e%2e%2fencoded",
    "données/日本語/🙂.bin",
    "\u202eevil-rtl",
    "x" * 4000,
    "/".join(["deep"] * 300),
]
#: What may exist in a tier directory: nothing is ever named after a key.
ALLOWED = re.compile(r"^(blobs(/[0-9a-f]{2}(/[0-9a-f]{32})?)?|tmp|small\.lmdb(-lock)?)$")
#: The write tier's staging: files are named by time, process and random bits, never keys.
WRITE_ALLOWED = re.compile(
    r"^write(/(journal\.lmdb(-lock)?|(open|data)(/[0-9a-f]+-[0-9]+-[0-9a-f]{8})?))?$"
)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """Tiers and index inside one directory of their own, so escapes would be visible."""
    base = tmp_path / "sandbox"
    base.mkdir(mode=0o700)
    dirs = {"ram": base / "ram", "ssd": base}
    yield dirs
    from tiercache.cache import close_all

    close_all()
    TierCacheFileSystem.clear_instance_cache()


def _check_confined(base: Path, keys: list[str]) -> None:
    top = sorted(p.name for p in base.iterdir())
    assert top in (["ram", "ssd"], ["ram", "ssd", "ssd-write"]), top
    write = base / "ssd-write"  # the write tier's staging, beside the last tier
    for path in write.rglob("*") if write.exists() else ():
        rel = "write/" + path.relative_to(write).as_posix()
        assert WRITE_ALLOWED.match(rel), f"unexpected path in the write tier: {rel!r}"
    for root in (base / "ram", base / "ssd"):
        for path in root.rglob("*"):
            rel = path.relative_to(root).as_posix()
            if rel == "index" or rel.startswith("index/"):
                continue
            assert ALLOWED.match(rel), f"unexpected path in a tier: {rel!r}"
    index = base / "ssd" / "index"
    names = {p.name for p in index.rglob("*")}
    for key in keys:
        leaf = key.rstrip("/").rsplit("/", 1)[-1]
        if len(leaf) > 3:
            assert not any(leaf in n for n in names), f"{leaf!r} became a file name"


@pytest.mark.parametrize("size", [1000, 100_000], ids=["small", "large"])
def test_hostile_keys_never_escape_the_tiers(sandbox: dict[str, Path], size: int) -> None:
    mem = fsspec.filesystem("memory", skip_instance_cache=True)
    prefix = f"/hostile-{uuid.uuid4().hex[:8]}/"
    bodies = {}
    for i, key in enumerate(HOSTILE):
        body = os.urandom(size) + str(i).encode()
        mem.pipe_file(prefix + key, body)
        bodies[prefix + key] = body
    fs = TierCacheFileSystem(config=make_config(sandbox, ram="256KiB"), fs=mem)
    for path, body in bodies.items():
        assert fs.cat_file(path) == body, repr(path[:80])
        assert fs.cat_file(path, start=3, end=50) == body[3:50]
    for path, body in bodies.items():  # again: now hits, from either tier
        assert fs.cat_file(path) == body
    engine = fs.cache.engine
    assert engine is not None and engine.verify()["ok"]
    _check_confined(sandbox["ssd"].parent / "sandbox", HOSTILE)
    assert not Path("/tmp/escaped").exists()


def test_hostile_keys_written_never_escape_the_staging(sandbox: dict[str, Path]) -> None:
    """Written through the write tier (staged, journaled, uploaded to a non-S3 origin and
    verified by reading back): no key becomes a path on this node."""
    mem = fsspec.filesystem("memory", skip_instance_cache=True)
    prefix = f"/hostile-w-{uuid.uuid4().hex[:8]}/"
    config = make_config(sandbox, ram="256KiB", write={"exit_wait_seconds": 0})
    fs = TierCacheFileSystem(config=config, fs=mem)
    bodies = {prefix + key: os.urandom(3000) + str(i).encode() for i, key in enumerate(HOSTILE)}
    for path, body in bodies.items():
        fs.pipe_file(path, body)
        assert fs.cat_file(path) == body, repr(path[:80])
    _check_confined(sandbox["ssd"].parent / "sandbox", HOSTILE)
    assert fs.sync(timeout=120) == []
    for path, body in bodies.items():
        assert mem.cat_file(path) == body
    _check_confined(sandbox["ssd"].parent / "sandbox", HOSTILE)
    assert not Path("/tmp/escaped").exists()


def test_hostile_keys_through_s3(sandbox: dict[str, Path], s3_server: S3, bucket: str) -> None:
    """The keys moto will store, through the real S3 path (URL-encoding, s3fs, moto)."""
    stored = {}
    for i, key in enumerate(HOSTILE):
        body = os.urandom(70_000) + str(i).encode()
        try:
            s3_server.client.put_object(Bucket=bucket, Key=key, Body=body)
        except Exception:
            continue  # S3 refuses it (too long, NUL): the memory:// test covers it
        stored[key] = body
    assert len(stored) >= 6, sorted(stored)
    fs = TierCacheFileSystem(
        config=make_config(sandbox), target_protocol="s3", target_options=s3_server.options
    )
    for key, body in stored.items():
        try:
            data = fs.cat_file(f"{bucket}/{key}")
        except (FileNotFoundError, OriginError):
            continue  # s3fs normalises the path into another key: a clean miss, no escape
        assert data == body, repr(key[:80])
    _check_confined(sandbox["ssd"].parent / "sandbox", list(stored))


def test_odd_file_names_from_a_local_origin(sandbox: dict[str, Path], tmp_path: Path) -> None:
    src = tmp_path / "origin"
    src.mkdir()
    names = ["données 🙂.bin", "n" * 255, "sp ace", "new\nline", "-rf", "..."]
    for i, name in enumerate(names):
        (src / name).write_bytes(os.urandom(80_000) + bytes([i]))
    local = fsspec.filesystem("file")
    fs = TierCacheFileSystem(config=make_config(sandbox), fs=local)
    for name in names:
        assert fs.cat_file(f"file://{src / name}") == (src / name).read_bytes()
    _check_confined(sandbox["ssd"].parent / "sandbox", names)


def _modes(root: Path) -> dict[str, str]:
    """Anything not 0700 (directories) or 0600 (files, sockets): path -> octal mode."""
    bad = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
        if stat.S_IMODE(st.st_mode) != want:
            bad[str(path)] = oct(stat.S_IMODE(st.st_mode))
    return bad


def test_everything_created_is_private_even_with_umask_0(
    tmp_path: Path, s3_server: S3, bucket: str
) -> None:
    """Modes come from tiercache, not from the umask: with ``umask 0`` every directory is
    0700 and every file 0600 (blobs, small.lmdb, index, counters, socket, listings, trace),
    including parent directories the cache had to create."""
    base = tmp_path / "private"
    base.mkdir(mode=0o700)
    dirs = {"ram": base / "shm" / "a" / "b", "ssd": base / "disk" / "c"}
    config = make_config(dirs, trace=str(base / "trace" / "access.jsonl"))
    for i in range(6):
        s3_server.client.put_object(
            Bucket=bucket, Key=f"m/{i}", Body=os.urandom(2000 * 50 ** (i % 2))
        )
    old = os.umask(0)
    try:
        fs = TierCacheFileSystem(
            config=config, target_protocol="s3", target_options=s3_server.options
        )
        fs.ls(f"{bucket}/m")
        for i in range(6):
            fs.cat_file(f"{bucket}/m/{i}")
        assert fs.cache.is_engine and (dirs["ssd"] / "ssd" / "index" / "engine.sock").exists()
        fs.cache.flush_access()
    finally:
        os.umask(old)
    created = [base / "shm", base / "disk", base / "trace"]
    kinds = {p.name for root in created for p in root.rglob("*")}
    for name in ("small.lmdb", "index.lmdb", "engine.sock", "engine.lock", "access.jsonl"):
        assert name in kinds, f"{name} was not created; the check would be vacuous"
    assert any(p.parent.name == "stats" for root in created for p in root.rglob("*"))
    assert any(p.parent.name == "listings" for root in created for p in root.rglob("*"))
    bad = {k: v for root in created for k, v in _modes(root).items()}
    assert not bad, bad
    from tiercache.cache import close_all

    close_all()


@pytest.mark.parametrize("which", ["tier", "index"])
def test_a_cache_directory_owned_by_another_user_is_refused(tmp_path: Path, which: str) -> None:
    dirs = {"ram": tmp_path / "ram", "ssd": tmp_path / "ssd"}
    config = make_config(dirs, index={"path": str(tmp_path / "index")})
    target = dirs["ram"] if which == "tier" else tmp_path / "index"
    target.mkdir(mode=0o700)
    os.chown(target, 54321, 54321)
    with pytest.raises(UnsafeCacheDirError) as info:
        TierCacheFileSystem(config=config, fs=fsspec.filesystem("memory"))
    msg = str(info.value)
    assert str(target) in msg and "54321" in msg and "choose a path of your own" in msg


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o757], ids=["0777", "sticky-1777", "0757"])
def test_a_world_writable_cache_directory_is_refused(tmp_path: Path, mode: int) -> None:
    """Sticky or not: anyone could pre-create ``small.lmdb`` or ``index.lmdb`` in it and
    hand this process forged entries."""
    dirs = {"ram": tmp_path / "ram", "ssd": tmp_path / "ssd"}
    dirs["ram"].mkdir()
    os.chmod(dirs["ram"], mode)
    with pytest.raises(UnsafeCacheDirError) as info:
        TierCacheFileSystem(config=make_config(dirs), fs=fsspec.filesystem("memory"))
    assert str(dirs["ram"]) in str(info.value) and "chmod 700" in str(info.value)


# -- secrets ------------------------------------------------------------------------------------
@pytest.fixture
def secret() -> str:
    return f"SeCrEt{uuid.uuid4().hex}"


def test_credentials_never_appear_in_logs_errors_stats_metrics_or_traces(
    cache_dirs: dict[str, Path],
    s3_server: S3,
    bucket: str,
    proxy: FaultProxy,
    secret: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from tiercache.metrics import serve

    caplog.set_level(logging.DEBUG)  # every logger, botocore and s3fs included
    trace = tmp_path / "trace.jsonl"
    config = make_config(cache_dirs, trace=str(trace), origin={"retries": 1, "timeout_seconds": 5})
    for i in range(4):
        s3_server.client.put_object(Bucket=bucket, Key=f"s/{i}", Body=os.urandom(100_000))
    proxy.add(Fault("status", status=500, code="InternalError", times=None, path="/s/3"))
    fs = TierCacheFileSystem(config=config, fs=origin_fs(proxy.endpoint, secret=secret))
    texts: list[str] = []
    for i in range(3):
        fs.cat_file(f"{bucket}/s/{i}")
        fs.cat_file(f"{bucket}/s/{i}")
    fs.ls(f"{bucket}/s")
    for bad in (f"{bucket}/s/3", f"{bucket}/missing"):
        try:
            fs.cat_file(bad)
        except (OriginError, FileNotFoundError) as exc:
            texts.append("".join(traceback.format_exception(exc)))
            texts.append(repr(exc))
    assert len(texts) == 4
    texts.append(json.dumps(fs.stats()))
    with serve(fs.config, port=0) as server, urllib.request.urlopen(server.url) as resp:
        texts.append(resp.read().decode())
    fs.cache.flush_access()
    texts.append(trace.read_text())
    texts.append(caplog.text)
    cfg = tmp_path / "cache.toml"
    cfg.write_text(toml(config))
    from tiercache.cache import close_all

    close_all()
    for args in (["stats", "--json"], ["stats"], ["verify", "--json"]):
        out = subprocess.run(
            [sys.executable, "-m", "tiercache", *args, "--config", str(cfg)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        texts += [out.stdout, out.stderr]
    for text in texts:
        assert secret not in text
    # Nor on disk anywhere in the cache (index, counters, listings, blobs, sockets).
    for root in (cache_dirs["ram"], cache_dirs["ssd"]):
        for path in root.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path


def test_metrics_endpoint_binds_loopback_by_default(cache_dirs: dict[str, Path]) -> None:
    from tiercache.metrics import serve

    fs = TierCacheFileSystem(config=make_config(cache_dirs), fs=fsspec.filesystem("memory"))
    with serve(fs.config, port=0) as server:
        assert server.bind == "127.0.0.1"
        assert server.server.socket.getsockname()[0] == "127.0.0.1"
        for address in _own_addresses():  # not reachable on the node's other addresses
            with pytest.raises(OSError), socket.create_connection((address, server.port), 2):
                pass


def _own_addresses() -> list[str]:
    """This machine's non-loopback IPv4 addresses (none in a bare network namespace)."""
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    return [a for a in out if "." in a and not a.startswith("127.")]
