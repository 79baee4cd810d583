"""What filesystem a path lives on, and whether the cache may live there.

The index is LMDB, whose locks and memory-mapped pages are unsafe on network filesystems
(its own documentation says so), and the engine's lock and socket must be one per node. On
clusters ``$HOME`` is often NFS or Lustre, shared by every node: a cache there would be one
index, one lock and one socket for the whole cluster. So the index and the tiers are refused
on network and shared filesystems unless the user says ``allow_network_fs = true``; and a
memory tier is recognised by its filesystem (tmpfs, ramfs), not by its path.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

#: Filesystems shared between nodes (or reached over a network), by mountinfo type.
NETWORK_TYPES = frozenset(
    {
        "nfs", "nfs4", "lustre", "cifs", "smb3", "smbfs", "ceph", "cephfs", "gpfs", "beegfs",
        "glusterfs", "afs", "9p", "ocfs2", "gfs2", "orangefs", "pvfs2", "davfs", "sshfs",
        "fuse", "juicefs", "alluxio", "wekafs", "panfs", "quobyte",
    }
)  # fmt: skip
#: FUSE filesystems backed by a local block device (ntfs-3g, exfat): local, not shared.
LOCAL_FUSE_TYPES = frozenset({"fuseblk"})
MEMORY_TYPES = frozenset({"tmpfs", "ramfs"})


class Mount(NamedTuple):
    """The mount a path lives on: its filesystem type and where it is mounted."""

    fstype: str
    mountpoint: str

    @property
    def is_network(self) -> bool:
        kind = self.fstype
        if kind in LOCAL_FUSE_TYPES:
            return False
        return kind in NETWORK_TYPES or kind.startswith("fuse.")

    @property
    def is_memory(self) -> bool:
        return self.fstype in MEMORY_TYPES


def mount_of(path: Path | str) -> Mount:
    """The mount holding ``path``, or the one that will hold it once it is created."""
    probe = Path(os.path.abspath(path))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    st = os.stat(probe)
    return _mount_of(os.major(st.st_dev), os.minor(st.st_dev), str(probe.resolve()))


@lru_cache(maxsize=64)
def _mount_of(major: int, minor: int, real: str) -> Mount:
    device = f"{major}:{minor}"
    by_device: Mount | None = None
    by_prefix: Mount | None = None
    for mount in _mountinfo():
        dev, point, fstype = mount
        if dev == device:
            by_device = Mount(fstype, point)  # the last one listed is the one on top
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and (by_prefix is None or len(point) >= len(by_prefix.mountpoint)):
            by_prefix = Mount(fstype, point)
    return by_device or by_prefix or Mount("unknown", "/")


def _mountinfo() -> list[tuple[str, str, str]]:
    """(major:minor, mount point, filesystem type) of every mount this process sees."""
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    mounts = []
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        point = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        mounts.append((fields[2], point, right.split()[0]))
    return mounts


class NetworkFilesystemError(ValueError):
    """The index or a tier would live on a network or shared filesystem."""


def refuse_network(path: Path, what: str) -> None:
    """Raise :class:`NetworkFilesystemError` naming ``path`` and its filesystem if it is a
    network or shared one."""
    mount = mount_of(path)
    if mount.is_network:
        raise NetworkFilesystemError(
            f"{what} {path} is on a {mount.fstype} filesystem (mounted at {mount.mountpoint}), "
            "which is shared between nodes or reached over the network: the cache's index "
            "and lock must be node-local (LMDB is unsafe there). Put it on a local disk or "
            "/dev/shm, or set allow_network_fs = true if this filesystem is really private "
            "to this node"
        )


def user_cache_home() -> Path:
    """This user's cache directory for tiercache's disk tier and index, on a local disk.

    ``$XDG_CACHE_HOME``, else ``~/.cache``, as every user expects, but only if that is not a
    network filesystem (a cluster's NFS home is shared by every node); otherwise
    ``/var/tmp/tiercache-<uid>``, which is node-local on every common system.
    """
    candidates = []
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):
        candidates.append(Path(xdg))
    candidates.append(Path.home() / ".cache")
    for candidate in candidates:
        if not mount_of(candidate).is_network:
            return candidate
    return Path(f"/var/tmp/tiercache-{os.getuid()}")
