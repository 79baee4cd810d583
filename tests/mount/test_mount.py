"""``tiercache mount``: ordinary programs read a moto bucket through a real kernel FUSE mount."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import S3, make_config, put_objects
from tests.mount.conftest import Mount, in_proc_mounts

MiB = 1024 * 1024
TAR_MEMBERS = {"0001.jpg": b"\xff\xd8" + b"j" * 5000, "0001.cls": b"7", "0002.jpg": b"x" * 70000}


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


TOKENS = np.random.default_rng(0).integers(0, 50_000, size=300_000, dtype=np.uint16)
OBJECTS: dict[str, bytes] = {
    "data/a.bin": random.Random(1).randbytes(3 * MiB + 12345),  # spans several 1 MiB requests
    "data/b.bin": random.Random(2).randbytes(100_000),
    "data/small.txt": b"hello, fuse\n",  # the small-object store's path, not a blob file
    "data/empty.bin": b"",
    "data/name with space.txt": b"spaces are fine\n",
    "data/sub/deeper/c.bin": random.Random(3).randbytes(200_000),
    "data/shard-000.tar": _tar(TAR_MEMBERS),
    "data/tokens.bin": TOKENS.tobytes(),
}


@pytest.fixture
def dataset(s3_server: S3, bucket: str) -> str:
    put_objects(s3_server, bucket, OBJECTS)
    return f"s3://{bucket}/data"


@pytest.fixture
def config(cache_dirs: dict[str, Path]) -> dict[str, Any]:
    return make_config(cache_dirs, ram="8MiB", ssd="32MiB")


@pytest.fixture
def mounted(start_mount: Callable[..., Mount], dataset: str, config: dict[str, Any]) -> Mount:
    return start_mount(dataset, config)


def _rel(key: str) -> str:
    return key.removeprefix("data/")


def test_find_ls_and_sha256_match_the_origin(mounted: Mount) -> None:
    mp = mounted.path
    found = subprocess.run(["find", str(mp), "-type", "f"], capture_output=True, text=True,
                           check=True).stdout.splitlines()  # fmt: skip
    assert sorted(os.path.relpath(p, mp) for p in found) == sorted(map(_rel, OBJECTS))

    listing = subprocess.run(["ls", "-lA", "--time-style=+%s", str(mp)], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
    sizes = {}
    for line in listing.splitlines()[1:]:  # "total N" first
        fields = line.split(None, 6)
        sizes[fields[6]] = (fields[0][0], int(fields[4]))
    top = {k: v for k, v in OBJECTS.items() if "/" not in _rel(k)}
    assert {n: s for n, (kind, s) in sizes.items() if kind == "-"} == {
        _rel(k): len(v) for k, v in top.items()
    }
    assert sizes["sub"][0] == "d"

    sums = subprocess.run(["sha256sum", *found], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip
    got = {os.path.relpath(line[66:], mp): line[:64] for line in sums.splitlines()}
    assert got == {_rel(k): hashlib.sha256(v).hexdigest() for k, v in OBJECTS.items()}


def test_mtimes_come_from_the_origin(mounted: Mount, s3_server: S3, dataset: str) -> None:
    bucket = dataset.split("/")[2]
    head = s3_server.client.head_object(Bucket=bucket, Key="data/b.bin")
    assert abs(os.stat(mounted.path / "b.bin").st_mtime - head["LastModified"].timestamp()) < 1


def test_tar_tf_lists_a_shard(mounted: Mount) -> None:
    out = subprocess.run(["tar", "tf", str(mounted.path / "shard-000.tar")],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert out.split() == list(TAR_MEMBERS)


def test_open_seek_read_ranges(mounted: Mount) -> None:
    data = OBJECTS["data/a.bin"]
    rng = random.Random(7)
    ranges = [(0, 10), (MiB - 5, 10), (2 * MiB, 2 * MiB), (len(data) - 3, 100), (len(data), 5)]
    ranges += [(rng.randrange(len(data)), rng.randrange(1, 3 * MiB)) for _ in range(20)]
    with open(mounted.path / "a.bin", "rb", buffering=0) as f:
        for offset, n in ranges:
            f.seek(offset)
            assert f.read(n) == data[offset : offset + n], (offset, n)
        assert f.seek(0, os.SEEK_END) == len(data)
        # several threads on one descriptor, as DataLoader-style readers do
        fd = f.fileno()
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda r: os.pread(fd, r[1], r[0]), ranges))
        assert got == [data[o : o + n] for o, n in ranges]
    assert (mounted.path / "small.txt").read_bytes() == OBJECTS["data/small.txt"]
    assert (mounted.path / "empty.bin").read_bytes() == b""
    assert (mounted.path / "name with space.txt").read_bytes() == b"spaces are fine\n"
    assert (mounted.path / "sub/deeper/c.bin").read_bytes() == OBJECTS["data/sub/deeper/c.bin"]


def test_numpy_memmap_of_a_token_file(mounted: Mount) -> None:
    tokens = np.memmap(mounted.path / "tokens.bin", dtype=np.uint16, mode="r")
    try:
        assert tokens.shape == TOKENS.shape
        assert np.array_equal(tokens[123_456:123_999], TOKENS[123_456:123_999])
        assert np.array_equal(tokens, TOKENS)
    finally:
        del tokens


class PlainFiles:
    """A map-style dataset over plain paths: what code that knows nothing of fsspec does."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[str, str, int]:
        with open(self.paths[i], "rb") as f:
            data = f.read()
        return self.paths[i], hashlib.sha256(data).hexdigest(), os.getpid()


def test_torch_dataloader_with_two_workers_reads_plain_paths(mounted: Mount) -> None:
    torch = pytest.importorskip("torch")
    paths = sorted(str(mounted.path / _rel(k)) for k in OBJECTS) * 3
    loader = torch.utils.data.DataLoader(PlainFiles(paths), batch_size=2, num_workers=2,
                                         collate_fn=lambda batch: batch)  # fmt: skip
    seen = [item for batch in loader for item in batch]
    assert [p for p, _, _ in seen] == paths
    for path, digest, _ in seen:
        key = "data/" + os.path.relpath(path, mounted.path)
        assert digest == hashlib.sha256(OBJECTS[key]).hexdigest()
    assert len({pid for _, _, pid in seen}) == 2
    assert all(pid != os.getpid() for _, _, pid in seen)


def _open(path: Path, flags: int = os.O_RDONLY) -> None:
    os.close(os.open(path, flags))


def _errno_of(fn: Callable[[], Any]) -> int | None:
    try:
        fn()
    except OSError as exc:
        return exc.errno
    return None


def test_writes_creates_renames_deletes_fail_with_erofs(mounted: Mount) -> None:
    mp = mounted.path
    attempts: dict[str, Callable[[], Any]] = {
        "create": lambda: _open(mp / "new.bin", os.O_WRONLY | os.O_CREAT),
        "write existing": lambda: _open(mp / "b.bin", os.O_RDWR),
        "append": lambda: _open(mp / "b.bin", os.O_WRONLY | os.O_APPEND),
        "truncate": lambda: os.truncate(mp / "b.bin", 0),
        "mkdir": lambda: os.mkdir(mp / "newdir"),
        "rmdir": lambda: os.rmdir(mp / "sub"),
        "unlink": lambda: os.unlink(mp / "b.bin"),
        "rename": lambda: os.rename(mp / "b.bin", mp / "c.bin"),
        "chmod": lambda: os.chmod(mp / "b.bin", 0o777),
        "symlink": lambda: os.symlink("b.bin", mp / "link"),
    }
    assert {what: _errno_of(fn) for what, fn in attempts.items()} == {
        what: errno.EROFS for what in attempts
    }
    assert (mp / "b.bin").read_bytes() == OBJECTS["data/b.bin"]  # nothing changed


def test_missing_paths_are_enoent(mounted: Mount) -> None:
    assert _errno_of(lambda: os.stat(mounted.path / "nope.bin")) == errno.ENOENT
    assert _errno_of(lambda: _open(mounted.path / "sub/nope.bin")) == errno.ENOENT
    assert _errno_of(lambda: os.listdir(mounted.path / "nodir")) == errno.ENOENT
    assert _errno_of(lambda: os.listdir(mounted.path / "b.bin")) == errno.ENOTDIR


def test_sigterm_unmounts_cleanly(mounted: Mount) -> None:
    assert (mounted.path / "small.txt").read_bytes() == OBJECTS["data/small.txt"]
    with open(mounted.path / "b.bin", "rb") as f:  # an open handle must not block the exit
        f.read(10)
        mounted.proc.send_signal(signal.SIGTERM)
        assert mounted.proc.wait(20) == 0
    assert not in_proc_mounts(mounted.path)
    assert os.listdir(mounted.path) == []  # the bare directory again, not a dead mount


def test_unmount_command(mounted: Mount) -> None:
    cli = [sys.executable, "-m", "tiercache", "unmount", str(mounted.path)]
    assert subprocess.run(cli, capture_output=True).returncode == 0
    assert mounted.proc.wait(20) == 0
    assert not in_proc_mounts(mounted.path)
    again = subprocess.run(cli, capture_output=True, text=True)
    assert again.returncode == 1
    assert "not a mount point" in again.stderr and str(mounted.path) in again.stderr


def test_background_mount_returns_once_mounted(dataset: str, config: dict[str, Any],
                                               tmp_path: Path, s3_server: S3) -> None:  # fmt: skip
    from tests.mount.conftest import _to_toml, force_unmount

    mp = tmp_path / "mnt"
    mp.mkdir()
    toml = tmp_path / "c.toml"
    toml.write_text(_to_toml(config))
    env = {**os.environ, "AWS_ENDPOINT_URL": s3_server.endpoint}
    cmd = [sys.executable, "-m", "tiercache", "mount", dataset, str(mp), "--config", str(toml),
           "--background", "--log-file", str(tmp_path / "bg.log")]  # fmt: skip
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert in_proc_mounts(mp)  # mounted when the command returned, no waiting needed
        pid = int(re.search(r"pid (\d+)", done.stdout).group(1))  # type: ignore[union-attr]
        assert (mp / "small.txt").read_bytes() == OBJECTS["data/small.txt"]
        unmount = [sys.executable, "-m", "tiercache", "unmount", str(mp)]
        assert subprocess.run(unmount, capture_output=True).returncode == 0
        deadline = time.monotonic() + 20
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid)
    finally:
        force_unmount(mp)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_mount_errors_name_the_problem(tmp_path: Path, config: dict[str, Any],
                                      s3_server: S3, bucket: str) -> None:  # fmt: skip
    from tests.mount.conftest import _to_toml

    toml = tmp_path / "c.toml"
    toml.write_text(_to_toml(config))
    env = {**os.environ, "AWS_ENDPOINT_URL": s3_server.endpoint}
    base = [sys.executable, "-m", "tiercache", "mount"]
    missing_dir = subprocess.run([*base, f"s3://{bucket}", str(tmp_path / "nope"), "--config",
                                  str(toml)], env=env, capture_output=True, text=True)  # fmt: skip
    assert missing_dir.returncode == 1
    assert "nope" in missing_dir.stderr and "not an existing directory" in missing_dir.stderr
    put_objects(s3_server, bucket, {"x/file.bin": b"1"})
    a_file = subprocess.run([*base, f"s3://{bucket}/x/file.bin", str(tmp_path), "--config",
                             str(toml)], env=env, capture_output=True, text=True)  # fmt: skip
    assert a_file.returncode == 1 and "is a file" in a_file.stderr
    assert not in_proc_mounts(tmp_path)


#: botocore's own retries multiply s3fs's; one attempt each keeps a refused connection brief.
NO_BOTO_RETRIES = '{"config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1}}'


def _dead_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again: connections refused


def test_unreachable_origin_with_nothing_cached_is_eio_logged_once(
    start_mount: Callable[..., Mount], cache_dirs: dict[str, Path]
) -> None:
    config = make_config(cache_dirs, origin={"retries": 0, "timeout_seconds": 2})
    mounted = start_mount(
        "s3://nobucket/data", config, "--target-options", NO_BOTO_RETRIES, endpoint=_dead_endpoint()
    )
    for _ in range(2):
        assert _errno_of(lambda: os.listdir(mounted.path)) == errno.EIO
        assert _errno_of(lambda: _open(mounted.path / "x.bin")) == errno.EIO
    log = mounted.log_text()
    assert len(re.findall(r"readdir /: EIO", log)) == 1, log
    assert len(re.findall(r"/x\.bin: EIO", log)) == 1, log


def test_cached_files_survive_an_unreachable_origin(
    start_mount: Callable[..., Mount], cache_dirs: dict[str, Path]
) -> None:
    """The origin goes away mid-mount: what was read is still served, the rest is EIO."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="offline")
        for key in ("data/a.bin", "data/b.bin"):
            client.put_object(Bucket="offline", Key=key, Body=OBJECTS[key])
        config = make_config(cache_dirs, origin={"retries": 0, "timeout_seconds": 2})
        mounted = start_mount(
            "s3://offline/data",
            config,
            "--no-kernel-cache",
            "--target-options",
            NO_BOTO_RETRIES,
            endpoint=endpoint,
        )
        assert sorted(os.listdir(mounted.path)) == ["a.bin", "b.bin"]
        assert (mounted.path / "a.bin").read_bytes() == OBJECTS["data/a.bin"]
    finally:
        server.stop()
    assert (mounted.path / "a.bin").read_bytes() == OBJECTS["data/a.bin"]
    assert _errno_of(lambda: (mounted.path / "b.bin").read_bytes()) == errno.EIO
    assert "b.bin" in mounted.log_text()


def test_listings_follow_the_validation_ttl(
    start_mount: Callable[..., Mount], cache_dirs: dict[str, Path], s3_server: S3, bucket: str
) -> None:
    put_objects(s3_server, bucket, {"d/one.bin": b"1"})
    url = f"s3://{bucket}/d"
    short = start_mount(url, make_config(cache_dirs, validation={"mode": "ttl",
                                                                 "ttl_seconds": 1}))  # fmt: skip
    long = start_mount(url, make_config(cache_dirs, validation={"mode": "ttl",
                                                                "ttl_seconds": 600}))  # fmt: skip
    assert os.listdir(short.path) == os.listdir(long.path) == ["one.bin"]
    put_objects(s3_server, bucket, {"d/two.bin": b"22"})
    time.sleep(1.5)
    assert sorted(os.listdir(short.path)) == ["one.bin", "two.bin"]
    assert (short.path / "two.bin").read_bytes() == b"22"
    assert os.listdir(long.path) == ["one.bin"]  # still the cached listing


def test_a_changed_object_is_read_anew_after_the_ttl(
    start_mount: Callable[..., Mount], cache_dirs: dict[str, Path], s3_server: S3, bucket: str
) -> None:
    """Opens do not reach the daemon and the page cache is kept across them; an object
    rewritten at the origin (same size and a new mtime, or a new size) is read anew once
    the kernel's attributes, the listing and the tier's validation (1 s each) have expired."""
    before = {"c/same.bin": b"a" * 300_000, "c/grow.bin": b"b" * 1000}
    put_objects(s3_server, bucket, before)
    mounted = start_mount(f"s3://{bucket}/c", make_config(cache_dirs, validation={
        "mode": "ttl", "ttl_seconds": 1}))  # fmt: skip
    for _ in range(2):  # the second pass comes from the kernel's page cache
        for key, data in before.items():
            assert (mounted.path / _rel_c(key)).read_bytes() == data
    time.sleep(1.1)  # S3 mtimes have one-second resolution: the rewrite gets a later one
    after = {"c/same.bin": b"A" * 300_000, "c/grow.bin": b"B" * 3000}
    put_objects(s3_server, bucket, after)
    time.sleep(3.5)
    for key, data in after.items():
        assert (mounted.path / _rel_c(key)).read_bytes() == data, key
        assert os.stat(mounted.path / _rel_c(key)).st_size == len(data)


def _rel_c(key: str) -> str:
    return key.removeprefix("c/")


def test_a_stale_mount_is_reported_and_cleared_by_unmount(
    mounted: Mount, dataset: str, config: dict[str, Any], tmp_path: Path, s3_server: S3
) -> None:
    """SIGKILL leaves a dead mount; a new mount refuses it, ``tiercache unmount`` clears it."""
    from tests.mount.conftest import _to_toml

    mounted.proc.kill()
    mounted.proc.wait(10)
    assert in_proc_mounts(mounted.path)
    assert _errno_of(lambda: os.listdir(mounted.path)) == errno.ENOTCONN
    toml = tmp_path / "again.toml"
    toml.write_text(_to_toml(config))
    env = {**os.environ, "AWS_ENDPOINT_URL": s3_server.endpoint}
    again = subprocess.run([sys.executable, "-m", "tiercache", "mount", dataset,
                            str(mounted.path), "--config", str(toml)], env=env,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert again.returncode == 1 and "already mounted" in again.stderr
    unmount = [sys.executable, "-m", "tiercache", "unmount", str(mounted.path)]
    assert subprocess.run(unmount, capture_output=True).returncode == 0
    assert not in_proc_mounts(mounted.path)
