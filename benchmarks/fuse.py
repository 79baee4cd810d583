"""The FUSE mount against the in-process filesystem, on the same cache and the same bytes.

Two ratios, measured in one run against an S3-compatible server (moto, HTTP on loopback,
in its own process):

- warm: ``cat`` of every 4 MiB file through ``tiercache mount`` (one ``cat`` process over
  all files, the tiers already holding them) against ``fs.cat_file`` of the same paths in
  this process. Floors: >= 0.5x and >= 1.0 GB/s.
- cold: the same ``cat`` through a mount over an empty cache against ``tiercache warm`` of
  the same prefix into another empty cache. Floor: >= 0.7x.

The warm pass is measured twice: as mounted by default, where the kernel keeps the page
cache of a file whose size and mtime have not changed (a second epoch is then served by
the kernel, as it is for any user), and with ``--no-kernel-cache``, where every byte of
every pass goes through FUSE, Python and the tiers. Both are reported; the floors apply to
the default.

    python benchmarks/fuse.py [--files 64] [--size 4MiB] [--repeat 5] [--json-only]

Prints a table, then the same figures as JSON. Needs ``fuse3`` and ``/dev/fuse``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CREDENTIALS, moto_server, upload  # noqa: E402

from tiercache.sizes import parse_size  # noqa: E402

FLOORS = {"warm_ratio": 0.5, "warm_gb_per_s": 1.0, "cold_ratio": 0.7}


def write_config(root: Path, name: str, total: int) -> Path:
    """Two tiers in fresh directories; RAM large enough to hold the whole set."""
    ram = Path("/dev/shm") / f"tiercache-bench-fuse-{os.getpid()}-{name}"
    path = root / f"{name}.toml"
    path.write_text(f"""
[[tiers]]
name = "ram"
path = "{ram}"
capacity = {total * 2}
eviction = "lru"
verify = "on-change"

[[tiers]]
name = "ssd"
path = "{root / name / "ssd"}"
capacity = {total * 2}
eviction = "lru"

[index]
path = "{root / name / "index"}"
""")
    return path


@contextlib.contextmanager
def mounted(url: str, mountpoint: Path, config: Path, env: dict[str, str],
            *extra: str) -> Iterator[None]:  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "tiercache", "mount", url, str(mountpoint),
                             "--config", str(config), *extra], env=env,
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None:
                raise RuntimeError(f"mount failed: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                raise RuntimeError("mount did not come up in 60 s")
            time.sleep(0.05)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            subprocess.run(["fusermount3", "-uz", str(mountpoint)], check=False)
            proc.kill()


def timed_cat(files: list[Path]) -> float:
    """Seconds for one ``cat`` process to read ``files`` into /dev/null."""
    started = time.perf_counter()
    subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = parse_size(args.size)
    total = size * args.files
    results: dict[str, Any] = {
        "files": args.files, "file_bytes": size, "total_bytes": total, "repeat": args.repeat,
        "python": platform.python_version(), "cpus": os.cpu_count(), "kernel": platform.release(),
    }  # fmt: skip
    root = Path(tempfile.mkdtemp(prefix="tiercache-bench-fuse-"))
    mnt_cold, mnt_warm = root / "mnt-cold", root / "mnt-warm"
    mnt_cold.mkdir()
    mnt_warm.mkdir()
    try:
        with moto_server() as endpoint:
            env = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}
            os.environ.update(CREDENTIALS)
            os.environ["AWS_ENDPOINT_URL"] = endpoint
            body = os.urandom(size)
            names = [f"shard-{i:05d}.bin" for i in range(args.files)]
            # distinct bytes per object, without paying for fresh randomness each time
            upload(endpoint, "bench", {f"train/{n}": body[i:] + body[:i]
                                       for i, n in enumerate(names)})  # fmt: skip
            url = "s3://bench/train"

            # -- cold: tiercache warm vs cat through a mount over an empty cache ---------------
            warm_cfg = write_config(root, "warmcli", total)
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "tiercache", "warm", url, "--config",
                            str(warm_cfg), "--json"], env=env, check=True,
                           stdout=subprocess.DEVNULL)  # fmt: skip
            warm_cli_s = time.perf_counter() - started
            cold_cfg = write_config(root, "mount", total)
            with mounted(url, mnt_cold, cold_cfg, env):
                cold_s = timed_cat([mnt_cold / n for n in names])
            results["cold"] = {
                "tiercache_warm_gb_per_s": total / warm_cli_s / 1e9,
                "mount_cat_gb_per_s": total / cold_s / 1e9,
            }
            results["cold"]["ratio"] = (
                results["cold"]["mount_cat_gb_per_s"] / results["cold"]["tiercache_warm_gb_per_s"]
            )

            # -- warm: cat through the mount vs fs.cat_file in-process, same cache -------------
            from tiercache.fs import TierCacheFileSystem

            fs = TierCacheFileSystem(config=str(cold_cfg), target_protocol="s3")
            paths = [f"bench/train/{n}" for n in names]
            files = [mnt_warm / n for n in names]
            catfile_s: list[float] = []
            warm: dict[str, Any] = {}
            for mode, extra in (("page_cache", ()), ("no_page_cache", ("--no-kernel-cache",))):
                with mounted(url, mnt_warm, cold_cfg, env, *extra):
                    timed_cat(files)  # listings, and the page cache where it is kept
                    mount_s = []
                    for _ in range(args.repeat):  # interleaved, so drift hits both alike
                        mount_s.append(timed_cat(files))
                        started = time.perf_counter()
                        for p in paths:
                            fs.cat_file(p)
                        catfile_s.append(time.perf_counter() - started)
                warm[f"mount_cat_{mode}_gb_per_s"] = total / min(mount_s) / 1e9
                warm[f"mount_cat_{mode}_median_gb_per_s"] = (
                    total / sorted(mount_s)[len(mount_s) // 2] / 1e9
                )
            # The ceiling for any `cat`: the RAM tier's own blob files, read natively.
            ram = Path("/dev/shm") / f"tiercache-bench-fuse-{os.getpid()}-mount"
            blobs = [p for p in ram.rglob("*") if p.is_file() and p.stat().st_size == size]
            if len(blobs) == len(names):
                timed_cat(blobs)
                warm["native_cat_ram_tier_gb_per_s"] = (
                    total / min(timed_cat(blobs) for _ in range(args.repeat)) / 1e9
                )
            warm["fs_cat_file_gb_per_s"] = total / min(catfile_s) / 1e9
            warm["fs_cat_file_median_gb_per_s"] = (
                total / sorted(catfile_s)[len(catfile_s) // 2] / 1e9
            )
            for mode in ("page_cache", "no_page_cache"):
                warm[f"ratio_{mode}"] = (
                    warm[f"mount_cat_{mode}_gb_per_s"] / warm["fs_cat_file_gb_per_s"]
                )
            results["warm"] = warm
            from tiercache.cache import close_all

            close_all()
    finally:
        for mp in (mnt_cold, mnt_warm):
            if os.path.ismount(mp):
                subprocess.run(["fusermount3", "-uz", str(mp)], check=False)
        for shm in Path("/dev/shm").glob(f"tiercache-bench-fuse-{os.getpid()}-*"):
            shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    results["floors"] = FLOORS
    w = results["warm"]
    results["pass"] = {
        "warm_ratio": w["ratio_page_cache"] >= FLOORS["warm_ratio"],
        "warm_gb_per_s": w["mount_cat_page_cache_gb_per_s"] >= FLOORS["warm_gb_per_s"],
        "warm_ratio_no_page_cache": w["ratio_no_page_cache"] >= FLOORS["warm_ratio"],
        "warm_gb_per_s_no_page_cache": (
            w["mount_cat_no_page_cache_gb_per_s"] >= FLOORS["warm_gb_per_s"]
        ),
        "cold_ratio": results["cold"]["ratio"] >= FLOORS["cold_ratio"],
    }
    return results


def table(r: dict[str, Any]) -> str:
    w, c = r["warm"], r["cold"]
    mib = r["file_bytes"] / 2**20
    rows = [
        f"FUSE mount: {r['files']} files x {mib:g} MiB, best of {r['repeat']}, "
        f"{r['cpus']} CPUs, Python {r['python']}",
        f"{'pass':<44}{'GB/s':>8}{'ratio':>8}{'floor':>8}",
        f"{'warm: fs.cat_file in-process':<44}{w['fs_cat_file_gb_per_s']:>8.2f}",
        f"{'ceiling: native cat of the RAM-tier files':<44}"
        f"{w.get('native_cat_ram_tier_gb_per_s', float('nan')):>8.2f}",
        f"{'warm: cat, mount (default: page cache kept)':<44}"
        f"{w['mount_cat_page_cache_gb_per_s']:>8.2f}{w['ratio_page_cache']:>8.2f}"
        f"{FLOORS['warm_ratio']:>8.2f}",
        f"{'warm: cat, mount --no-kernel-cache':<44}"
        f"{w['mount_cat_no_page_cache_gb_per_s']:>8.2f}{w['ratio_no_page_cache']:>8.2f}"
        f"{FLOORS['warm_ratio']:>8.2f}",
        f"{'cold: tiercache warm (prefix)':<44}{c['tiercache_warm_gb_per_s']:>8.2f}",
        f"{'cold: cat through a mount over empty tiers':<44}{c['mount_cat_gb_per_s']:>8.2f}"
        f"{c['ratio']:>8.2f}{FLOORS['cold_ratio']:>8.2f}",
    ]
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=64)
    parser.add_argument("--size", default="4MiB")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json-only", action="store_true")
    args = parser.parse_args()
    results = run(args)
    if not args.json_only:
        print(table(results))
    print(json.dumps(results, indent=2))
    # The page-cache-free figures are reported, not gated: see docs/performance.md.
    gated = ("warm_ratio", "warm_gb_per_s", "cold_ratio")
    return 0 if all(results["pass"][k] for k in gated) else 1


if __name__ == "__main__":
    sys.exit(main())
