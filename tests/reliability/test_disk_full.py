"""The SSD tier's filesystem fills up: the cache shrinks to fit or steps aside, readers
always get their bytes, and the index stays consistent.

A real, small filesystem: an 8 MiB tmpfs mounted by the test (root is needed to mount;
without it the tests are skipped, saying so). The SSD tier is configured far larger than
the filesystem, and the index lives on it too (the default place), so both blob writes
and index commits meet a full disk.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import S3, make_config, put_objects
from tiercache import TierCacheFileSystem

MiB = 1 << 20
FS_BYTES = 8 * MiB


@pytest.fixture
def small_fs() -> Iterator[Path]:
    mnt = Path(tempfile.mkdtemp(prefix="tiercache-tmpfs-"))
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES},mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        mnt.rmdir()
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        from tiercache.cache import close_all

        close_all()
        TierCacheFileSystem.clear_instance_cache()
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        with contextlib.suppress(OSError):
            mnt.rmdir()


def _objects(rng: random.Random) -> dict[str, bytes]:
    """About 20 MiB in all: large blobs, mid-sized ones and small-store objects."""
    sizes = [MiB] * 14 + [300_000] * 6 + [20_000] * 8
    return {f"full/{i:02d}": rng.randbytes(size) for i, size in enumerate(sizes)}


def _fs(cache_dirs: dict[str, Path], small_fs: Path, s3: S3) -> TierCacheFileSystem:
    dirs = {"ram": cache_dirs["ram"], "ssd": small_fs}
    config = make_config(dirs, ram=MiB, ssd="64MiB", promotion={"hits": 1})
    return TierCacheFileSystem(config=config, target_protocol="s3", target_options=s3.options)


def _fill(mnt: Path) -> Path:
    """Fill the filesystem from outside the cache, to the last byte."""
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    chunk = b"\0" * (64 * 1024)
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    finally:
        os.close(fd)
    return filler


def _read_all(fs: TierCacheFileSystem, bucket: str, objs: dict[str, bytes], seed: int) -> None:
    keys = list(objs)
    random.Random(seed).shuffle(keys)
    for key in keys:
        assert fs.cat_file(f"{bucket}/{key}") == objs[key], key
        with fs.open(f"{bucket}/{key}") as f:  # the open-file path, too
            f.seek(len(objs[key]) // 2)
            assert f.read(100) == objs[key][len(objs[key]) // 2 :][:100]


def _check_consistent(fs: TierCacheFileSystem, small_fs: Path) -> dict[str, object]:
    engine = fs.cache.engine
    assert engine is not None
    report = engine.verify()
    assert report["ok"], report["problems"]
    st = os.statvfs(small_fs)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    assert used <= FS_BYTES
    return report


def test_ssd_tier_larger_than_its_filesystem_shrinks_to_fit(
    cache_dirs: dict[str, Path], small_fs: Path, s3_server: S3, bucket: str
) -> None:
    objs = _objects(random.Random(1))
    put_objects(s3_server, bucket, objs)
    fs = _fs(cache_dirs, small_fs, s3_server)
    for seed in range(3):
        _read_all(fs, bucket, objs, seed)
    report = _check_consistent(fs, small_fs)
    ssd = report["tiers"]["ssd"]  # type: ignore[index]
    assert 0 < ssd["used_bytes"] < FS_BYTES  # it is used, and within the disk
    # The budget follows the disk, so the policy evicted rather than failing writes.
    assert fs.stats()["tiers"]["ssd"]["evictions"] > 0


def test_filesystem_filled_from_outside_mid_run(
    cache_dirs: dict[str, Path], small_fs: Path, s3_server: S3, bucket: str
) -> None:
    """Another program fills the disk and keeps taking whatever the cache frees: the SSD
    tier shrinks or is bypassed, reads go on, and it grows back once the space returns."""
    objs = _objects(random.Random(2))
    put_objects(s3_server, bucket, objs)
    fs = _fs(cache_dirs, small_fs, s3_server)
    _read_all(fs, bucket, objs, 0)
    before = fs.stats()["tiers"]["ssd"]
    assert before["used_bytes"] > FS_BYTES // 2

    stop = threading.Event()
    hog = threading.Thread(target=_hog, args=(small_fs / "hog", stop), daemon=True)
    hog.start()
    try:
        for seed in (1, 2, 3):  # from the tiers where cached, else from the origin
            _read_all(fs, bucket, objs, seed)
        assert os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize < MiB
    finally:
        stop.set()
        hog.join()
    pressed = fs.stats()["tiers"]["ssd"]
    assert pressed["bypass_full"] > before["bypass_full"]
    assert pressed["used_bytes"] < before["used_bytes"]
    _check_consistent(fs, small_fs)

    (small_fs / "hog").unlink()  # space comes back: the tier is used again
    for seed in (4, 5):
        _read_all(fs, bucket, objs, seed)
    assert fs.stats()["tiers"]["ssd"]["used_bytes"] > pressed["used_bytes"]
    _check_consistent(fs, small_fs)


def _hog(path: Path, stop: threading.Event) -> None:
    """Append to ``path`` until told to stop, taking every block that becomes free."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    chunk = b"\0" * 4096
    try:
        while not stop.is_set():
            try:
                os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                time.sleep(0.002)
    finally:
        os.close(fd)


def test_restart_on_a_full_filesystem(
    cache_dirs: dict[str, Path], small_fs: Path, s3_server: S3, bucket: str
) -> None:
    """The engine's process goes away and a new one starts on a disk with no byte free:
    it reconciles, serves every read, and the cache checks out."""
    objs = dict(list(_objects(random.Random(3)).items())[::3])
    put_objects(s3_server, bucket, objs)
    fs = _fs(cache_dirs, small_fs, s3_server)
    _read_all(fs, bucket, objs, 0)
    config = fs.config.source  # "<dict>": hand the dict itself to the new process
    config_dict = make_config(
        {"ram": cache_dirs["ram"], "ssd": small_fs}, ram=MiB, ssd="64MiB", promotion={"hits": 1}
    )
    from tiercache.cache import close_all

    close_all()  # the engine's process lets go
    _fill(small_fs)
    script = textwrap.dedent(
        """
        import hashlib, json, sys
        from tiercache import TierCacheFileSystem
        args = json.loads(sys.argv[1])
        fs = TierCacheFileSystem(config=args["config"], target_protocol="s3",
                                 target_options=args["options"])
        out = {}
        for _ in range(2):
            for path in args["paths"]:
                out[path] = hashlib.sha256(fs.cat_file(path)).hexdigest()
        report = fs.cache.engine.verify()
        print(json.dumps({"digests": out, "ok": report["ok"], "problems": report["problems"]}))
        """
    )
    args = {
        "config": config_dict,
        "options": s3_server.options,
        "paths": [f"{bucket}/{k}" for k in objs],
    }
    proc = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", script, json.dumps(args)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["ok"], result["problems"]
    assert result["digests"] == {
        f"{bucket}/{k}": hashlib.sha256(v).hexdigest() for k, v in objs.items()
    }
    assert config == "<dict>"
