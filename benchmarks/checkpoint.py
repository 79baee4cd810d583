"""Checkpoint save and restore: tiercache's write tier against a local disk and plain s3fs.

One state dict (``--gib``, float32 tensors of 64 MiB) is saved, in one run, by:

* ``local``: ``torch.save`` to a local file, then ``fsync``: the floor for the stall;
* ``s3fs``: ``torch.save`` straight into ``s3fs.open(url, "wb")``: the stall *and* the time
  until the checkpoint is durable in S3, with s3fs's own (sequential) multipart upload;
* ``tiercache``: ``torch.save`` into ``fs.open("tiercache::s3://...", "wb")``: the stall is
  until ``close()`` returns (staged on local disk, journaled); then ``fs.sync()`` says when
  it is durable in S3 (time counted from the start of the save);

and the same three with PyTorch DCP (``dcp.save`` with ``FileSystemWriter`` /
``FsspecWriter``, ``sync_files=True``). Then each is restored: from the local file, from the
cache (warm: the checkpoint this node just wrote), through tiercache cold (cache cleared:
from S3) and through s3fs.

The S3 server runs on loopback in its own process: moto (``--server moto``, the default:
it keeps CRC32 checksums, as S3 does) or npm's s3rver (``--server s3rver``: objects as files,
lighter on the CPUs this machine shares with it; no CRC32 and no ListParts, so tiercache
verifies by ETags). ``--origin-mbit N`` caps what it
sends *and* receives to N Mbit/s each way (``benchmarks/_shaping.py``: tc htb on ``lo`` for
the server's port only; root), as a remote bucket's link would; without it, loopback and
this machine's CPUs set the pace. Ratios are computed within one run.

    python benchmarks/checkpoint.py [--gib 2] [--origin-mbit 800] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import moto_server, report, s3_options  # noqa: E402
from _shaping import capped_origin  # noqa: E402

TENSOR_MIB = 64
S3RVER_JS = Path("/usr/lib/node_modules/s3rver/bin/s3rver.js")


@contextlib.contextmanager
def s3rver_server(directory: Path) -> Iterator[str]:
    """npm's s3rver on a free loopback port (``npm install -g s3rver@3.7.1``)."""
    import socket
    import subprocess

    exe = shutil.which("s3rver")
    command = [exe] if exe else ["node", str(S3RVER_JS)]
    if exe is None and not S3RVER_JS.exists():
        raise SystemExit("--server s3rver: npm install -g s3rver@3.7.1")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update({"AWS_ACCESS_KEY_ID": "S3RVER", "AWS_SECRET_ACCESS_KEY": "S3RVER"})
    process = subprocess.Popen(
        [*command, "-d", str(directory), "-a", "127.0.0.1", "-p", str(port), "--silent"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def make_state(gib: float) -> dict[str, torch.Tensor]:
    n = max(1, int(gib * 1024 / TENSOR_MIB))
    numel = TENSOR_MIB * 2**20 // 4
    g = torch.Generator().manual_seed(0)
    return {f"layer{i:03d}.weight": torch.rand(numel, generator=g) for i in range(n)}


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def drop_page_cache() -> None:
    """Best effort: so that 'cold' restores are not served by the kernel (root only)."""
    with contextlib.suppress(OSError):
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")


@contextlib.contextmanager
def cache_config(root: Path, args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    ram = Path("/dev/shm") / f"tiercache-bench-write-back-{uuid.uuid4().hex[:8]}"
    config = {
        "tiers": [
            {"name": "ram", "path": str(ram), "capacity": "256MiB", "verify": "on-change"},
            {
                "name": "ssd",
                "path": str(root / "ssd"),
                "capacity": f"{args.gib * (2 * args.repeat + 1) + 1}GiB",
            },
        ],
        "write": {
            "capacity": f"{args.gib * 3 + 1}GiB",
            "part_size": args.part_size,
            "upload_concurrency": args.upload_concurrency,
            "exit_wait_seconds": 0,
        },
    }
    try:
        yield config
    finally:
        from tiercache.cache import close_all
        from tiercache.fs import TierCacheFileSystem

        close_all()
        TierCacheFileSystem.clear_instance_cache()
        shutil.rmtree(ram, ignore_errors=True)


def run(args: argparse.Namespace, endpoint: str, root: Path) -> dict[str, Any]:
    """Every measurement, in one run. Saves go in pairs (local, then tiercache) ``--repeat``
    times, warm restores ``--load-repeat`` times, right after the saves (both copies just
    written, as when a job restarts from its last checkpoint): on a shared machine each
    pair's ratio is the signal, the median of the pairs the figure. s3fs's uploads and the
    cold restores, minutes each at a capped link, are measured once, after."""
    import s3fs
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter

    from tiercache import TierCacheFileSystem

    bucket = f"bench-ckpt-{uuid.uuid4().hex[:8]}"
    options = s3_options(endpoint)
    if args.server == "s3rver":
        options = {**options, "key": "S3RVER", "secret": "S3RVER"}
    plain = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    plain.mkdir(bucket)
    state = make_state(args.gib)
    size = sum(t.numel() * t.element_size() for t in state.values())
    out: dict[str, Any] = {"bytes": size, "tensors": len(state)}

    def template() -> dict[str, torch.Tensor]:
        return {k: torch.empty_like(v) for k, v in state.items()}

    def record(name: str, seconds: float) -> None:
        out.setdefault(name, []).append(seconds)

    with cache_config(root, args) as config:
        fs = TierCacheFileSystem(config=config, target_protocol="s3", target_options=options)
        dcp_options = {"tiercache": {"config": config}, "s3": options}

        def save_local(path: Path) -> None:
            with open(path, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())

        def save_tc(url: str) -> None:
            with fs.open(url, "wb") as f:
                torch.save(state, f)

        def dcp_local(path: Path) -> None:
            dcp.save(state, storage_writer=FileSystemWriter(str(path)), no_dist=True)

        def dcp_tc(url: str) -> None:
            writer = FsspecWriter(f"tiercache::s3://{url}", **dcp_options)
            dcp.save(state, storage_writer=writer, no_dist=True)

        # -- saves: local and tiercache in pairs, then s3fs once --------------------------------
        for r in range(args.repeat):
            for kind, local_save, tc_save, suffix in (
                ("", save_local, save_tc, ".pt"),
                ("dcp_", dcp_local, dcp_tc, ""),
            ):
                gc.collect()
                target = root / f"local-{kind}{r}{suffix}"
                started = time.perf_counter()
                local_save(target)
                record(f"local_{kind}save", time.perf_counter() - started)
                if r + 1 < args.repeat:  # the last local copy of each kind is kept for restores
                    if suffix:
                        target.unlink()
                    else:
                        shutil.rmtree(target, ignore_errors=True)
                started = time.perf_counter()
                tc_save(f"{bucket}/tc-{kind}{r}{suffix}")
                record(f"tiercache_{kind}save", time.perf_counter() - started)
                left = fs.sync(timeout=args.timeout)
                record(f"tiercache_{kind}durable", time.perf_counter() - started)
                assert not left, left

        # -- restores: warm (this node wrote it) in pairs, then cold once ----------------------
        last = args.repeat - 1  # the checkpoints written last, as a restarting job reads
        local, tc = root / f"local-{last}.pt", f"{bucket}/tc-{last}.pt"
        tc_dcp = f"tiercache::s3://{bucket}/tc-dcp_{last}"

        def load_local() -> None:
            assert same(torch.load(local, weights_only=True), state)

        def load_tc() -> None:
            with fs.open(tc, "rb") as f:
                assert same(torch.load(f, weights_only=True), state)

        def load_s3fs() -> None:
            with plain.open(f"{bucket}/s3fs/ckpt.pt", "rb", block_size=64 << 20) as f:
                assert same(torch.load(f, weights_only=True), state)

        def dcp_load(reader: Any) -> Callable[[], None]:
            def go() -> None:
                loaded = template()
                dcp.load(loaded, storage_reader=reader, no_dist=True)
                assert same(loaded, state)

            return go

        for _ in range(args.load_repeat + 1):  # the first pair maps files in; all are kept
            gc.collect()
            record("local_load", timed(load_local))
            record("tiercache_warm_load", timed(load_tc))
            local_dcp = FileSystemReader(str(root / f"local-dcp_{last}"))
            record("local_dcp_load", timed(dcp_load(local_dcp)))
            record("tiercache_warm_dcp_load", timed(dcp_load(FsspecReader(tc_dcp, **dcp_options))))
        out["warm_entries"] = fs.stats()["tiers"]["ssd"]["entries"]

        def save_s3fs() -> None:
            with plain.open(f"{bucket}/s3fs/ckpt.pt", "wb") as f:
                torch.save(state, f)

        def dcp_s3fs() -> None:
            writer = FsspecWriter(f"s3://{bucket}/s3fs-dcp", **options)
            dcp.save(state, storage_writer=writer, no_dist=True)

        record("s3fs_save", timed(save_s3fs))
        record("s3fs_dcp_save", timed(dcp_s3fs))

        fs.cache.engine_call("clear")
        drop_page_cache()
        record("tiercache_cold_load", timed(load_tc))
        record("s3fs_load", timed(load_s3fs))
        fs.cache.engine_call("clear")
        record("tiercache_cold_dcp_load", timed(dcp_load(FsspecReader(tc_dcp, **dcp_options))))
        reader = FsspecReader(f"s3://{bucket}/s3fs-dcp", **options)
        record("s3fs_dcp_load", timed(dcp_load(reader)))
        out["uploads"] = fs.stats()["uploads"]
    return out


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _pairs(r: dict[str, Any], a: str, b: str) -> list[float]:
    """Ratios a/b of each pair measured together."""
    return [x / y for x, y in zip(r[a], r[b], strict=False)]


def summarize(r: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    gib = r["bytes"] / 2**30
    rows = []
    for kind, prefix in (("torch.save", ""), ("DCP", "dcp_")):
        s3 = r[f"s3fs_{prefix}save"][0]
        stall = _pairs(r, f"tiercache_{prefix}save", f"local_{prefix}save")
        rows.append(
            {
                "checkpoint": kind,
                "GiB": gib,
                "local+fsync s": _median(r[f"local_{prefix}save"]),
                "tiercache stall s": _median(r[f"tiercache_{prefix}save"]),
                "stall / local": _median(stall),
                "pairs": " ".join(f"{x:.2f}" for x in stall),
                "s3fs s": s3,
                "s3fs / stall": s3 / _median(r[f"tiercache_{prefix}save"]),
                "tiercache durable s": _median(r[f"tiercache_{prefix}durable"]),
                "durable / s3fs": _median(r[f"tiercache_{prefix}durable"]) / s3,
            }
        )
    loads = []
    for kind, prefix in (("torch.load", ""), ("DCP", "dcp_")):
        speed = _pairs(r, f"local_{prefix}load", f"tiercache_warm_{prefix}load")[1:]
        loads.append(
            {
                "restore": kind,
                "local s": _median(r[f"local_{prefix}load"][1:]),
                "tiercache warm s": _median(r[f"tiercache_warm_{prefix}load"][1:]),
                "warm speed / local": _median(speed),
                "pairs": " ".join(f"{x:.2f}" for x in speed),
                "tiercache cold s": r[f"tiercache_cold_{prefix}load"][0],
                "s3fs s": r[f"s3fs_{prefix}load"][0],
            }
        )
    floors = {
        "stall <= 1.3x local": all(row["stall / local"] <= 1.3 for row in rows),
        "stall >= 5x shorter than s3fs": all(row["s3fs / stall"] >= 5 for row in rows),
        "durable <= 1.1x s3fs": all(row["durable / s3fs"] <= 1.1 for row in rows),
        "warm restore >= 0.9x local": all(row["warm speed / local"] >= 0.9 for row in loads),
    }
    return rows + loads, floors


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gib", type=float, default=2.0, help="state dict size (GiB)")
    p.add_argument("--origin-mbit", type=float, default=None, help="cap the S3 server's link")
    p.add_argument("--server", choices=("moto", "s3rver"), default="moto")
    p.add_argument("--part-size", default="32MiB")
    p.add_argument("--upload-concurrency", type=int, default=8)
    p.add_argument("--repeat", type=int, default=2, help="pairs of saves")
    p.add_argument("--load-repeat", type=int, default=5, help="pairs of warm restores")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--dir", default=None, help="where local copies and the cache go (a disk)")
    p.add_argument("--json", metavar="FILE", help="also write the results here")
    args = p.parse_args()

    root = Path(tempfile.mkdtemp(prefix="tiercache-bench-write-back-", dir=args.dir))
    try:
        server = s3rver_server(root / "s3rver") if args.server == "s3rver" else moto_server()
        with server as endpoint:
            port = urllib.parse.urlsplit(endpoint).port or 80
            shaping = (
                capped_origin(port, args.origin_mbit, uploads=True)
                if args.origin_mbit
                else contextlib.nullcontext()
            )
            with shaping:
                result = run(args, endpoint, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows, floors = summarize(result)
    extra = {"server": args.server, "origin_mbit": args.origin_mbit, "floors": floors}
    save_cols = ["checkpoint", "GiB", "local+fsync s", "tiercache stall s", "stall / local",
                 "pairs", "s3fs s", "s3fs / stall", "tiercache durable s",
                 "durable / s3fs"]  # fmt: skip
    load_cols = ["restore", "local s", "tiercache warm s", "warm speed / local", "pairs",
                 "tiercache cold s", "s3fs s"]  # fmt: skip
    report("checkpoint save", [r for r in rows if "checkpoint" in r], save_cols, False)
    report("checkpoint restore", [r for r in rows if "restore" in r], load_cols, False, extra)
    if args.json:
        Path(args.json).write_text(json.dumps({"raw": result, "rows": rows, **extra}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
