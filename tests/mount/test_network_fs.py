"""The index and tiers must be node-local: a path on a network or shared filesystem (here a
real FUSE mount, which reports its type the way sshfs or juicefs do) is refused with an error
naming the path and its filesystem, unless the config says allow_network_fs = true."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import S3, make_config, put_objects
from tests.mount.conftest import Mount
from tiercache import TierCacheFileSystem
from tiercache.config import load_config
from tiercache.localfs import NetworkFilesystemError, mount_of, user_cache_home


@pytest.fixture
def fuse_dir(start_mount: Callable[..., Mount], s3_server: S3, bucket: str,
             cache_dirs: dict[str, Path]) -> Path:  # fmt: skip
    put_objects(s3_server, bucket, {"d/x": b"x"})
    mounted = start_mount(f"s3://{bucket}/d", make_config(cache_dirs))
    return mounted.path


def test_an_index_on_a_fuse_filesystem_is_refused_naming_path_and_type(
    fuse_dir: Path, cache_dirs: dict[str, Path], s3_server: S3, tmp_path: Path
) -> None:
    assert mount_of(fuse_dir).is_network
    index = fuse_dir / "index"
    local = tmp_path / "local"
    config = make_config({"ram": local / "ram", "ssd": local}, index={"path": str(index)})
    with pytest.raises(NetworkFilesystemError) as err:
        TierCacheFileSystem(config=config, target_protocol="s3", target_options=s3_server.options)
    message = str(err.value)
    assert str(index) in message and f"a {mount_of(fuse_dir).fstype} filesystem" in message
    assert "allow_network_fs = true" in message
    assert not local.exists()  # refused before anything was created


def test_allow_network_fs_lets_the_user_take_the_risk(
    fuse_dir: Path, s3_server: S3, tmp_path: Path
) -> None:
    config = make_config(
        {"ram": tmp_path / "ram", "ssd": tmp_path},
        index={"path": str(fuse_dir / "index")},
        allow_network_fs=True,
    )
    # Past the check, the read-only mount itself refuses the index directory.
    with pytest.raises(OSError) as err:
        TierCacheFileSystem(config=config, target_protocol="s3", target_options=s3_server.options)
    assert not isinstance(err.value, NetworkFilesystemError)


def test_the_default_cache_home_skips_a_network_filesystem(
    fuse_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(fuse_dir))
    home = user_cache_home()
    assert home != fuse_dir and not mount_of(home).is_network
    config = load_config("training")
    assert not str(config.tiers[1].path).startswith(str(fuse_dir))
    assert config.tiers[0].path == Path(f"/dev/shm/tiercache-{os.getuid()}")


def test_verify_auto_hashes_disks_and_trusts_unchanged_memory(tmp_path: Path) -> None:
    config = load_config(
        {
            "tiers": [
                {"name": "ram", "path": f"/dev/shm/tiercache-auto-{tmp_path.name}",
                 "capacity": "1MiB"},
                {"name": "ssd", "path": str(tmp_path / "ssd"), "capacity": "1MiB"},
            ]
        }
    )  # fmt: skip
    assert [t.verify for t in config.tiers] == ["on-change", "always"]
    assert mount_of(tmp_path).fstype not in ("tmpfs", "ramfs")
