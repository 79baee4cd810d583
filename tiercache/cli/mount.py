"""``tiercache mount URL MOUNTPOINT`` and ``tiercache unmount MOUNTPOINT``.

The mount runs in the foreground so that a terminal, systemd or a test owns its lifetime
(Ctrl-C or SIGTERM unmounts). ``--background`` starts the same command as a detached child
and returns once the mount is live, or with the child's error if it could not mount.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..sizes import parse_size
from .common import (
    add_config_args,
    add_origin_args,
    config_from_args,
    origin_from_url,
    target_options,
)

_MOUNT_WAIT_SECONDS = 60.0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "mount",
        help="mount an origin prefix read-only through the cache (FUSE)",
        description="Mount URL (s3://bucket/prefix, file:///data, ...) read-only at MOUNTPOINT; "
        "reads go through the cache tiers. Runs in the foreground until Ctrl-C, SIGTERM or "
        "`tiercache unmount`. The S3 endpoint may come from AWS_ENDPOINT_URL.",
    )
    p.add_argument("url", metavar="URL")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    add_config_args(p)
    add_origin_args(p)
    p.add_argument(
        "--background", action="store_true", help="detach once mounted (logs go to --log-file)"
    )
    p.add_argument(
        "--log-file", metavar="FILE", help="append log lines here instead of standard error"
    )
    p.add_argument(
        "--allow-other",
        action="store_true",
        help="let other users read the mount (non-root needs user_allow_other in /etc/fuse.conf)",
    )
    p.add_argument(
        "--no-kernel-cache",
        dest="kernel_cache",
        action="store_false",
        help="drop the kernel's page cache of a file at every open and serve every open "
        "(every read then goes through the tiers, each open is validated as [validation] "
        "says; saves memory the RAM tier already spends)",
    )
    p.add_argument(
        "--readahead",
        default="4MiB",
        metavar="SIZE",
        help="kernel readahead for the mount (root only; 0 keeps the kernel's)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=16,
        help="most libfuse threads serving requests at once (default 16)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    p.set_defaults(func=run_mount_command)

    u = subparsers.add_parser(
        "unmount",
        help="unmount a tiercache mount (also clears a stale one)",
        description="Unmount MOUNTPOINT with fusermount3 -u; this also clears a stale mount "
        "whose process died ('Transport endpoint is not connected').",
    )
    u.add_argument("mountpoint", metavar="MOUNTPOINT")
    u.add_argument(
        "--lazy", action="store_true", help="detach now even if files are open (fusermount3 -uz)"
    )
    u.set_defaults(func=run_unmount_command)


def run_mount_command(args: argparse.Namespace) -> int:
    mountpoint = _check_mountpoint(args.mountpoint)
    config = config_from_args(args)  # errors in the config surface before anything forks
    options = target_options(args)
    readahead = parse_size(args.readahead, key="--readahead")
    if args.background:
        return _spawn_background(args, mountpoint, config)
    _setup_logging(args.log_file, args.verbose)

    from ..fs import TierCacheFileSystem
    from ..mount import run_mount

    fs, root = _filesystem(args.url, options, config, TierCacheFileSystem)
    try:
        run_mount(
            fs,
            root,
            mountpoint,
            allow_other=args.allow_other,
            kernel_cache=args.kernel_cache,
            readahead=readahead,
            threads=args.threads,
            debug=args.verbose,
        )
    except RuntimeError as exc:
        # mfusepy raises RuntimeError(status) after libfuse has printed why to stderr.
        raise OSError(
            f"could not mount {args.url} at {mountpoint} (libfuse status {exc}); "
            "see the message above"
        ) from None
    finally:
        from ..cache import close_all

        close_all()
    return 0


def run_unmount_command(args: argparse.Namespace) -> int:
    mountpoint = os.path.abspath(args.mountpoint)
    if not is_mounted(mountpoint):
        raise FileNotFoundError(f"{mountpoint} is not a mount point")
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    cmd = [tool, "-uz" if args.lazy else "-u", mountpoint] if tool else ["umount", mountpoint]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        msg = done.stderr.strip() or f"{cmd[0]} exited {done.returncode}"
        hint = " (files are open there; close them, or use --lazy)" if "busy" in msg else ""
        raise OSError(f"could not unmount {mountpoint}: {msg}{hint}")
    return 0


# -- helpers ---------------------------------------------------------------------------------------
def is_mounted(mountpoint: str) -> bool:
    """Whether ``mountpoint`` appears in /proc/mounts (stat would hang on a dead FUSE mount)."""
    target = os.path.abspath(mountpoint)
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 1 and _unescape(fields[1]) == target:
                return True
    return False


def _unescape(field: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _check_mountpoint(path: str) -> str:
    mountpoint = os.path.abspath(path)
    if is_mounted(mountpoint):
        raise OSError(
            f"{mountpoint} is already mounted; `tiercache unmount {mountpoint}` "
            "first (that also clears a stale mount)"
        )
    if not os.path.isdir(mountpoint):
        raise FileNotFoundError(f"mount point {mountpoint} is not an existing directory")
    return mountpoint


def _filesystem(url: str, options: dict[str, Any], config: Any, cls: Any) -> tuple[Any, str]:
    """The TierCacheFileSystem over ``url``'s origin, and the prefix to mount."""
    origin, root = origin_from_url(url, options)
    fs = cls(config=config, fs=origin)
    try:
        info = fs.info(root)
    except FileNotFoundError:
        raise FileNotFoundError(f"nothing at {url} to mount") from None
    except OSError as exc:  # unreachable: mount anyway and serve what is cached
        logging.getLogger("tiercache.mount").warning(
            "cannot reach the origin for %s (%s); serving only what is cached", url, exc
        )
        return fs, root
    if info.get("type") != "directory":
        raise NotADirectoryError(f"{url} is a file; mount the prefix that holds it")
    return fs, root


def _setup_logging(log_file: str | None, verbose: bool) -> None:
    handler: logging.Handler = (
        logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("botocore", "s3fs", "aiobotocore", "fsspec", "urllib3", "mfusepy", "fuse"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _spawn_background(args: argparse.Namespace, mountpoint: str, config: Any) -> int:
    """Run this same mount as a detached process; return once it is mounted.

    The child logs to ``--log-file`` (default: ``mount.log`` beside the cache index), never
    to our terminal, which goes away when we return.
    """
    log_path = Path(args.log_file or Path(config.index_path) / "mount.log").absolute()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = log_path.stat().st_size if log_path.exists() else 0
    argv = _argv_from(args, str(log_path))
    with open(log_path, "ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "tiercache", *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    deadline = time.monotonic() + _MOUNT_WAIT_SECONDS
    while time.monotonic() < deadline:
        if is_mounted(mountpoint):
            print(f"mounted {args.url} at {mountpoint} (pid {child.pid}, log {log_path})")
            return 0
        if child.poll() is not None:
            with open(log_path, "rb") as f:
                f.seek(start)
                err = f.read().decode(errors="replace").strip()
            raise OSError(
                f"the mount process exited with status {child.returncode}"
                + (f": {err}" if err else "")
            )
        time.sleep(0.05)
    child.terminate()
    raise TimeoutError(
        f"{mountpoint} was not mounted within {_MOUNT_WAIT_SECONDS:.0f} s; see {log_path}"
    )


def _argv_from(args: argparse.Namespace, log_file: str) -> list[str]:
    """The foreground command line equivalent to ``args``."""
    argv = [
        "mount",
        args.url,
        os.path.abspath(args.mountpoint),
        "--log-file",
        log_file,
        "--target-options",
        args.target_options,
        "--readahead",
        str(args.readahead),
        "--threads",
        str(args.threads),
    ]
    for flag in ("config", "policy"):
        if getattr(args, flag, None):
            argv += [f"--{flag.replace('_', '-')}", getattr(args, flag)]
    if args.allow_other:
        argv.append("--allow-other")
    if not args.kernel_cache:
        argv.append("--no-kernel-cache")
    if args.verbose:
        argv.append("--verbose")
    return argv
