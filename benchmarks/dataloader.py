"""DataLoader throughput from S3 (moto on loopback), epochs 1-3, tiercache against the rest.

Every configuration reads the same token shards with the same DataLoader (batch 64, 2 worker
processes, a shuffled order) and the same step, in one run:

* ``local``: the shards as local files (page cache), read with pread: the ceiling;
* ``s3fs``: s3fs with no cache (each worker downloads a shard whole when it opens it);
* ``simplecache``: fsspec ``simplecache::s3://`` (whole files downloaded to a local dir);
* ``tiercache``: the ``training`` policy, RAM tier half the data, SSD tier the whole data;
* ``tiercache-noprefetch``: the same without hints (no prefetch): the data-wait baseline;
* ``tiercache-half``: RAM + SSD together half the data (the origin-bytes floor);
* ``tiercache-half-nohint``: the same without hints (the preset's static fallback only);
* ``mosaic`` / ``mosaic-half``: MosaicML streaming, unlimited cache / cache half the data;
* ``litdata`` / ``litdata-half``: Lightning litdata, large cache / cache half the data.

Origin bytes per epoch come from moto's request recorder (GET sizes and ranges), the same
meter for everybody. ``raw`` is the concurrent origin bandwidth (16 parallel whole-object
GETs through s3fs), measured in the same run, the yardstick for cold epochs.

    python benchmarks/dataloader.py [--size 256MiB] [--only tiercache,local] [--json out.json]

``--origin-mbit 800`` caps the server's bandwidth (``benchmarks/_shaping.py``, root only) so
that, as with a remote bucket, the origin rather than this machine's CPUs bounds epoch 1.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import multiprocessing
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import traceback
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import engine_cpu_seconds, process_cpu_seconds  # noqa: E402
from _shaping import capped_origin  # noqa: E402

from tiercache.cache import close_all  # noqa: E402
from tiercache.cli.demo import demo_config  # noqa: E402
from tiercache.demo.data import token_chunks  # noqa: E402
from tiercache.demo.model import Trainer  # noqa: E402
from tiercache.demo.run import EpochStart, run_epochs  # noqa: E402
from tiercache.demo.server import S3Server, start_s3_server  # noqa: E402
from tiercache.sizes import parse_size  # noqa: E402
from tiercache.torch import ShardShuffleSampler, TokenDataset, write_tokens  # noqa: E402

ALL = ("local", "s3fs", "simplecache", "tiercache", "tiercache-noprefetch", "tiercache-half",
       "tiercache-half-nohint", "mosaic", "mosaic-half", "litdata", "litdata-half")  # fmt: skip
BUCKET = "dataloader-bench"


class Recorder:
    """Counts the GET bytes moto served, from its request recorder."""

    def __init__(self, server: S3Server, sizes: dict[str, int]) -> None:
        self.server = server
        self.sizes = sizes  # object path (bucket/key) -> bytes

    def _call(self, action: str) -> bytes:
        method = "GET" if action == "download-recording" else "POST"
        url = f"{self.server.endpoint}/moto-api/recorder/{action}"
        with urllib.request.urlopen(urllib.request.Request(url, method=method)) as r:
            return bytes(r.read())

    def start(self) -> None:
        self._call("reset-recording")
        self._call("start-recording")

    def stop(self) -> dict[str, int]:
        lines = self._call("download-recording").decode().splitlines()
        self._call("stop-recording")
        gets = nbytes = 0
        for line in lines:
            req = json.loads(line)
            url, _, query = req.get("url", "").partition("?")
            if req.get("method") != "GET" or "/moto-api/" in url:
                continue
            path = urllib.parse.unquote(url.split("/", 3)[-1])
            if path not in self.sizes:  # a listing: not an object this benchmark uploaded
                continue
            rng = {k.lower(): v for k, v in (req.get("headers") or {}).items()}.get("range")
            match = re.match(r"bytes=(\d+)-(\d*)", rng or "")
            size = self.sizes.get(path, 0)
            if match:
                end = int(match.group(2)) + 1 if match.group(2) else size
                nbytes += min(end, size) - int(match.group(1))
            else:
                nbytes += size
            gets += 1
        return {"gets": gets, "bytes": nbytes}


def measure(
    make_loader: Callable[[], Any],
    args: argparse.Namespace,
    recorder: Recorder,
    stats: Callable[[], dict[str, Any]] | None,
    name: str,
) -> list[dict[str, Any]]:
    """Three epochs; origin bytes of each from the recorder.

    Epoch 1 starts (clock, origin meter, cache counters) before the loader is made, for
    every configuration alike: a hinting sampler starts fetching when it is made, and the
    peers list or download their indexes then.
    """
    trainer = Trainer() if args.step == "model" else None

    def step(batch: Any) -> float:
        if trainer is not None:
            return trainer.step(batch)
        return float(batch[:, 0].sum())  # touch the data, nothing more

    rows = []
    recorder.start()
    cpu = (engine_cpu_seconds(), process_cpu_seconds())
    start = EpochStart.now(stats)
    loader = make_loader()
    for epoch in range(1, args.epochs + 1):
        if epoch > 1:
            recorder.start()
            cpu = (engine_cpu_seconds(), process_cpu_seconds())
        (row,) = run_epochs(loader, 1, sample_bytes=args.seq_len * args.itemsize, step=step,
                            stats=stats, progress=not args.no_progress, desc=name,
                            max_seconds=args.max_epoch_seconds,
                            start=start if epoch == 1 else None)  # fmt: skip
        counted = recorder.stop()
        if stats is not None:  # tiercache: the engine runs in this (the training) process
            engine_cpu, process_cpu = engine_cpu_seconds() - cpu[0], process_cpu_seconds() - cpu[1]
            row["engine_cpu_share"] = engine_cpu / process_cpu if process_cpu else 0.0
        row["epoch"] = epoch
        row["s3_gets"] = counted["gets"]
        row["s3_bytes"] = counted["bytes"]
        rows.append(row)
        if row.get("stopped"):
            mib = counted["bytes"] / 2**20
            print(f"  {name} epoch {epoch}: stopped after {row['seconds']:.0f} s "
                  f"({row['samples_per_s']:,.0f} samples/s, {mib:,.0f} MiB from S3); "
                  "skipping its remaining epochs", file=sys.stderr, flush=True)  # fmt: skip
            break
        print(f"  {name} epoch {epoch}: {row['samples_per_s']:,.0f} samples/s, "
              f"{counted['bytes'] / 2**20:,.0f} MiB from S3, loader wait "
              f"{row['loader_wait_s']:.2f} s"
              + (f", data-wait {row['data_wait_s']:.2f} s" if "data_wait_s" in row else "")
              + (f", engine {row['engine_cpu_share']:.1%} of this process's CPU"
                 if "engine_cpu_share" in row else ""),
              file=sys.stderr, flush=True)  # fmt: skip
    return rows


def loader_for(ds: Any, args: argparse.Namespace, hint: bool = True) -> DataLoader[Any]:
    sampler = ShardShuffleSampler(ds, seed=0, window=args.window, hint=hint)
    # fork explicitly, whatever the global start method (litdata.optimize() forces spawn)
    return DataLoader(ds, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                      persistent_workers=args.workers > 0,
                      multiprocessing_context="fork")  # fmt: skip


@contextlib.contextmanager
def tiers(root: Path, ram: int, ssd: int) -> Iterator[Any]:
    token = uuid.uuid4().hex[:8]
    shm = Path("/dev/shm") / f"tiercache-bench-{token}"
    base = root / f"tiers-{token}"
    try:
        yield demo_config("training", base, ram, ssd, shm=shm)
    finally:
        close_all()
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


def run_config(name: str, args: argparse.Namespace, env: dict[str, Any]) -> list[dict[str, Any]]:
    url, opts, rec, size = env["url"], env["options"], env["recorder"], env["dataset_bytes"]
    tok = {"seq_len": args.seq_len, "dtype": args.dtype}
    if name == "local":
        ds = TokenDataset(str(env["local"]), cache=False, **tok)
        return measure(lambda: loader_for(ds, args, hint=False), args, rec, None, name)
    if name == "s3fs":
        # No cache beyond an open file: each worker downloads a shard whole when it opens it
        # (cache_type "all") and forgets it when the handle closes. Per-sample ranged GETs
        # (cache_type "none") run at ~350 samples/s here; s3fs's default readahead buffer
        # re-reads whole blocks on every backward seek, 20x the data on a shuffled order.
        ds = TokenDataset(url, storage_options=opts, cache=False, **tok)
        ds.source.open_options = {"cache_type": "all"}
        return measure(lambda: loader_for(ds, args, hint=False), args, rec, None, name)
    if name == "simplecache":
        cache_dir = env["root"] / f"simplecache-{uuid.uuid4().hex[:6]}"
        ds = TokenDataset(f"simplecache::{url}", cache=False, storage_options={
            "s3": opts, "simplecache": {"cache_storage": str(cache_dir)}}, **tok)  # fmt: skip
        try:
            return measure(lambda: loader_for(ds, args, hint=False), args, rec, None, name)
        finally:
            shutil.rmtree(cache_dir, ignore_errors=True)
    if name.startswith("tiercache"):
        half = name.startswith("tiercache-half")
        ram, ssd = (size // 4, size // 4) if half else (size // 2, size)
        with tiers(env["root"], ram, ssd) as config:
            ds = TokenDataset(url, storage_options=opts, cache=config, **tok)
            assert ds.source.fs.cache.engine is not None  # the engine lives in this process
            hint = name not in ("tiercache-noprefetch", "tiercache-half-nohint")
            return measure(lambda: loader_for(ds, args, hint=hint), args, rec, ds.stats, name)
    if name.startswith("mosaic"):
        import peers

        local = env["root"] / f"mosaic-{uuid.uuid4().hex[:6]}"
        limit = size // 2 if name == "mosaic-half" else None
        os.environ["S3_ENDPOINT_URL"] = env["endpoint"]

        def mosaic_loader() -> DataLoader[Any]:
            ds = peers.MosaicTokens(f"s3://{BUCKET}/mds", local, args.batch_size, limit)
            return DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers,
                              persistent_workers=args.workers > 0,
                              multiprocessing_context="fork")  # fmt: skip

        try:
            return measure(mosaic_loader, args, rec, None, name)
        finally:
            shutil.rmtree(local, ignore_errors=True)
            with contextlib.suppress(Exception):
                peers.import_streaming_base().util.clean_stale_shared_memory()
    if name.startswith("litdata"):
        import peers

        cache_dir = env["root"] / f"litdata-{uuid.uuid4().hex[:6]}"
        limit = size // 2 if name == "litdata-half" else 4 * size
        try:
            return measure(lambda: peers.litdata_loader(
                f"s3://{BUCKET}/litdata", cache_dir, args.batch_size, args.workers, limit),
                args, rec, None, name)  # fmt: skip
        finally:
            shutil.rmtree(cache_dir, ignore_errors=True)
    raise ValueError(f"unknown configuration {name!r}; known: {', '.join(ALL)}")


def raw_bandwidth(url: str, options: dict[str, Any], paths: list[str]) -> float:
    """Bytes/s of 16 concurrent whole-object GETs through s3fs (the origin's capacity)."""
    import s3fs

    fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        total = sum(len(b) for b in pool.map(fs.cat_file, paths))
    return total / (time.perf_counter() - started)


def prepare(args: argparse.Namespace, root: Path, server: S3Server,
            names: list[str]) -> dict[str, Any]:  # fmt: skip
    size, shard = parse_size(args.size), parse_size(args.shard_size)
    url = f"s3://{BUCKET}/tokens"
    server.create_bucket(BUCKET)
    local = root / "local"
    # token_chunks counts uint16 bytes: ask for the token count this dtype needs
    chunks = list(token_chunks(size * 2 // args.itemsize, shard * 2 // args.itemsize, seed=0))
    arrays = [c.astype(args.dtype) for c in chunks]
    write_tokens(arrays, str(local), shard_bytes=shard, dtype=args.dtype)
    write_tokens(arrays, url, shard_bytes=shard, dtype=args.dtype, storage_options=server.options)
    files = sorted(local.glob("*.bin"))
    sizes = {f"{BUCKET}/tokens/{p.name}": p.stat().st_size for p in files}
    # Each peer's own format (peers.write_<folder>), made only if one of its rows runs.
    for prefix, label, folder in (("mosaic", "MosaicML streaming", "mds"),
                                  ("litdata", "litdata", "litdata")):  # fmt: skip
        if not any(n.startswith(prefix) for n in names):
            continue
        try:
            import peers

            src = root / f"{folder}-src"
            getattr(peers, f"write_{folder}")(files, src, args.seq_len, args.dtype, shard)
            _upload_dir(server, src, f"{BUCKET}/{folder}", sizes)
        except Exception as exc:
            print(f"{label} unavailable: {type(exc).__name__}: {exc}", file=sys.stderr)
            names[:] = [n for n in names if not n.startswith(prefix)]
    samples = sum(p.stat().st_size for p in files) // args.itemsize // args.seq_len
    return {"url": url, "options": server.options, "local": local, "root": root,
            "endpoint": server.endpoint, "dataset_bytes": samples * args.seq_len * args.itemsize,
            "paths": [f"{BUCKET}/tokens/{p.name}" for p in files],
            "recorder": Recorder(server, sizes)}  # fmt: skip


def _upload_dir(server: S3Server, src: Path, dest: str, sizes: dict[str, int]) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(**server.options, skip_instance_cache=True)
    for path in sorted(src.rglob("*")):
        if path.is_file():
            key = f"{dest}/{path.relative_to(src).as_posix()}"
            fs.put_file(str(path), key)
            sizes[key] = path.stat().st_size


def summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's floors, as ratios measured in this run."""
    runs = results["runs"]
    out = []

    def rate(name: str, epoch: int) -> float | None:
        rows = runs.get(name)
        return rows[epoch - 1]["samples_per_s"] if rows and len(rows) >= epoch else None

    def add(what: str, value: float | None, base: float | None, floor: float | None,
            kind: str = ">=") -> None:  # fmt: skip
        if value is None or not base:
            return
        ratio = value / base
        ok = None if floor is None else (ratio >= floor if kind == ">=" else ratio <= floor)
        out.append({"check": what, "ratio": ratio, "floor": floor, "ok": ok})

    for e in range(2, results["epochs"] + 1):
        add(f"tiercache warm epoch {e} / local files", rate("tiercache", e), rate("local", e), 0.95)
    sample_bytes = results["sample_bytes"]
    cold = rate("tiercache", 1)
    add("tiercache epoch 1 MB/s / raw concurrent origin MB/s",
        cold * sample_bytes if cold else None, results["raw_bytes_per_s"], 0.8)  # fmt: skip
    t, n = runs.get("tiercache"), runs.get("tiercache-noprefetch")
    if t and n and t[0].get("data_wait_s"):
        add("data-wait epoch 1: no prefetch / prefetch", n[0]["data_wait_s"],
            t[0]["data_wait_s"], 5.0)  # fmt: skip
    allowed = (1 - 0.5) * results["dataset_bytes"] + 0.05 * results["dataset_bytes"]
    for name in ("tiercache-half", "tiercache-half-nohint"):
        for row in runs.get(name) or []:
            if row["epoch"] > 1:
                add(f"{name} epoch {row['epoch']} origin bytes / allowed", row["s3_bytes"],
                    allowed, 1.0, kind="<=")  # fmt: skip
    for peer in ("mosaic", "litdata", "mosaic-half", "litdata-half"):
        for e in range(1, results["epochs"] + 1):
            ours = "tiercache-half" if peer.endswith("half") else "tiercache"
            add(f"{ours} / {peer} epoch {e}", rate(ours, e), rate(peer, e), 1.0)
    return out


def table(results: dict[str, Any]) -> str:
    lines = ["| configuration | samples/s epoch 1 / 2 / 3 | MiB from S3 per epoch | "
             "loader wait s | data-wait s | engine CPU share |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name, rows in results["runs"].items():
        if isinstance(rows, str):
            lines.append(f"| {name} | failed: {rows} | | | | |")
            continue
        rates = " / ".join(f"{r['samples_per_s']:,.0f}" + (" (stopped)" if r.get("stopped") else "")
                           for r in rows)  # fmt: skip
        mib = " / ".join(f"{r['s3_bytes'] / 2**20:,.0f}" for r in rows)
        lw = " / ".join(f"{r['loader_wait_s']:.1f}" for r in rows)
        dw = " / ".join(f"{r['data_wait_s']:.1f}" for r in rows) if "data_wait_s" in rows[0] else ""
        cpu = " / ".join(f"{r['engine_cpu_share']:.1%}" for r in rows if "engine_cpu_share" in r)
        lines.append(f"| {name} | {rates} | {mib} | {lw} | {dw} | {cpu} |")
    lines += ["", "| check | ratio | floor | ok |", "|---|---:|---:|---|"]
    for c in results["checks"]:
        floor = "" if c["floor"] is None else f"{c['floor']:g}"
        lines.append(f"| {c['check']} | {c['ratio']:.2f} | {floor} | {c['ok']} |")
    return "\n".join(lines)


def run_all(args: argparse.Namespace, env: dict[str, Any], names: list[str],
            results: dict[str, Any]) -> None:  # fmt: skip
    results["raw_bytes_per_s"] = raw_bandwidth(env["url"], env["options"], env["paths"])
    print(f"raw concurrent origin bandwidth: {results['raw_bytes_per_s'] / 1e6:,.0f} MB/s",
          file=sys.stderr)  # fmt: skip
    for name in names:
        failures = []
        for _ in range(3):  # simplecache can serve a partly written file: retry
            try:
                results["runs"][name] = run_config(name, args, env)
                break
            except Exception as exc:
                traceback.print_exc()
                failures.append(f"{type(exc).__name__}: {exc}"[:300])
                results["runs"][name] = failures[-1]
            finally:
                _settle()  # before a retry too, not only before the next configuration
        if failures:
            results.setdefault("failures", {})[name] = failures


def _settle() -> None:
    """Let nothing of one configuration run into the next one's clock.

    A loader that failed stays referenced from its traceback until the garbage collector
    runs, and its worker processes go on reading meanwhile: after simplecache's failure
    both of its workers were still running while the next configuration's first epoch was
    timed.
    """
    gc.collect()
    for child in multiprocessing.active_children():
        child.join(timeout=10)
        if child.is_alive():
            child.terminate()
            child.join(timeout=5)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="256MiB")
    p.add_argument("--shard-size", default="4MiB")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--dtype", default="uint32", choices=["uint16", "uint32"])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--window", type=int, default=8)
    p.add_argument(
        "--step",
        choices=["none", "model"],
        default="none",
        help="per-batch work: 'none' touches the data; 'model' runs the demo's step",
    )
    p.add_argument(
        "--max-epoch-seconds",
        type=float,
        default=60.0,
        help="cut an epoch short after this long (a thrashing configuration)",
    )
    p.add_argument(
        "--origin-mbit",
        type=float,
        help="cap the S3 server's bandwidth (Mbit/s, tc htb on lo; needs root), as a remote "
        "bucket's link would be: the origin, not this machine's CPUs, then bounds epoch 1",
    )
    p.add_argument("--only", default=",".join(ALL), help="comma-separated configurations")
    p.add_argument("--json", metavar="FILE", help="also write the results here")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()
    args.itemsize = np.dtype(args.dtype).itemsize
    # moto accepts any credentials; the peers' S3 clients (boto3, obstore) read them here.
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"})  # fmt: skip
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="tiercache-dlbench-"))
    rec_file = root / "moto-recording.jsonl"
    server_env = {"MOTO_ENABLE_RECORDING": "True", "MOTO_RECORDER_FILEPATH": str(rec_file)}
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )
    results: dict[str, Any] = {"machine": machine, "args": dict(vars(args)), "runs": {}}
    try:
        with start_s3_server(env=server_env) as server:
            rec_stop = Recorder(server, {})
            rec_stop._call("stop-recording")  # record epochs only, not the upload
            os.environ["AWS_ENDPOINT_URL"] = server.endpoint  # litdata (obstore)
            os.environ["S3_ENDPOINT_URL"] = server.endpoint  # MosaicML streaming
            env = prepare(args, root, server, names)
            results["dataset_bytes"] = env["dataset_bytes"]
            results["sample_bytes"] = args.seq_len * args.itemsize
            results["epochs"] = args.epochs
            port = urllib.parse.urlsplit(server.endpoint).port
            capped = (
                capped_origin(port or 80, args.origin_mbit)
                if args.origin_mbit
                else contextlib.nullcontext()
            )
            with capped:  # the upload above ran uncapped
                run_all(args, env, names, results)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ok_runs = {k: v for k, v in results["runs"].items() if not isinstance(v, str)}
    results["checks"] = summary({**results, "runs": ok_runs})
    print(table(results))
    print(json.dumps(results, indent=1, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
