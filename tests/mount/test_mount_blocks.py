"""Large objects through the FUSE mount: files above the block size are read block by block
(``cat`` and ``sha256sum`` sequentially, ``pread`` at random) by ordinary programs."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.conftest import S3, make_config, put_objects
from tests.mount.conftest import Mount

KiB, MiB = 1024, 1024 * 1024
BODY = random.Random(7).randbytes(3 * MiB + 4321)


def test_a_large_file_reads_sequentially_and_at_random_through_the_mount(
    start_mount: Callable[..., Mount], s3_server: S3, bucket: str, cache_dirs: dict[str, Path]
) -> None:
    put_objects(s3_server, bucket, {"big/weights.bin": BODY})
    config = make_config(cache_dirs, origin={"block_size": 256 * KiB})
    mounted = start_mount(f"s3://{bucket}/big", config)
    path = mounted.path / "weights.bin"
    assert path.stat().st_size == len(BODY)
    with open(path, "rb") as f:  # random reads first: only their blocks are fetched
        fd = f.fileno()
        rng = random.Random(0)
        for _ in range(20):
            offset = rng.randrange(len(BODY))
            assert os.pread(fd, 10 * KiB, offset) == BODY[offset : offset + 10 * KiB]
    digest = subprocess.run(
        ["sha256sum", str(path)], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()[0]
    assert digest == hashlib.sha256(BODY).hexdigest()
    out = subprocess.run(["cat", str(path)], capture_output=True, check=True, timeout=60).stdout
    assert out == BODY
    assert "Traceback" not in mounted.log_text()
