"""Large objects: one 4 GiB object, a model directory and a Parquet file through tiercache.

    python benchmarks/large.py                    # table (4 GiB object, 4 x 1 GiB model)
    python benchmarks/large.py --json             # JSON
    python benchmarks/large.py --object-gib 1 --model-gib 0.25 --parquet-gib 0.25   # quick

One run, one server (npm's ``s3rver`` on loopback, which serves ranges from files on disk;
moto copies a whole object per GET), the same objects for every configuration, and every
figure given as a ratio to its baseline measured in the same run:

* cold whole read of the large object: tiercache ``cat_file`` against s3transfer's
  ``download_fileobj`` (16 threads, 16 MiB parts, into a preallocated buffer) and against
  s3fs ``cat_file`` (one stream);
* warm whole read (RAM tier) against reading a local copy in the page cache;
* 200 random 1 MiB range reads, cold then warm: latency p50/p99 and origin bytes per read
  (and the most blocks one read fetched);
* a Parquet file of 32 row groups, one row group read: origin bytes against the row
  group's size;
* a model directory of safetensors files: ``tiercache warm`` of the directory (against
  s3transfer's rate on the large object), then ``load_safetensors`` cold and warm against
  ``safetensors.torch.load_file`` of a local copy in the page cache, with every tensor's
  bytes then read (``load_file`` alone maps the file and reads nothing until a tensor is
  used; its time is shown too).

Needs ``s3rver`` (``npm install -g s3rver@3.7.1``), pyarrow, safetensors and torch. Uses
about 2x the object size in RAM (the RAM tier and the bytes read) and 3x on disk.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))
from _common import Sink, report  # noqa: E402

GiB, MiB = 1 << 30, 1 << 20
BUCKET = "large"


def make_file(path: Path, size: int) -> None:
    """``size`` incompressible bytes: a random 64 MiB pattern, each MiB stamped with its
    offset so no two blocks are alike."""
    pattern = bytearray(os.urandom(64 * MiB))
    with open(path, "wb") as f:
        for offset in range(0, size, 64 * MiB):
            for mib in range(0, 64 * MiB, MiB):
                pattern[mib : mib + 8] = (offset + mib).to_bytes(8, "little")
            f.write(memoryview(pattern)[: min(64 * MiB, size - offset)])


def make_model(directory: Path, files: int, file_bytes: int) -> list[Path]:
    """``files`` safetensors shards of about ``file_bytes`` each (float32 and bfloat16)."""
    import torch
    from safetensors.torch import save_file

    paths = []
    gen = torch.Generator().manual_seed(0)
    per = 64 * MiB
    for i in range(files):
        tensors = {}
        for j in range(max(1, file_bytes // per)):
            dtype = torch.bfloat16 if j % 2 else torch.float32
            n = per // (2 if dtype == torch.bfloat16 else 4)
            tensors[f"layers.{i}.{j}.weight"] = torch.randn(n // 1024, 1024, generator=gen).to(
                dtype
            )
        path = directory / f"model-{i + 1:05d}-of-{files:05d}.safetensors"
        save_file(tensors, str(path))
        paths.append(path)
    return paths


def make_parquet(path: Path, size: int, row_groups: int = 32) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = size // 8 // row_groups
    with pq.ParquetWriter(str(path), pa.schema([("x", pa.int64())]), compression="none") as w:
        rng = np.random.default_rng(1)
        for _ in range(row_groups):
            column = rng.integers(0, 2**62, rows, dtype=np.int64)
            w.write_table(pa.table({"x": column}), row_group_size=rows)


def rate(size: int, seconds: float) -> float:
    return size / seconds / MiB


def best(repeat: int, fn: Any) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--object-gib", type=float, default=4.0)
    parser.add_argument("--model-files", type=int, default=4)
    parser.add_argument("--model-gib", type=float, default=1.0, help="size of each model file")
    parser.add_argument("--parquet-gib", type=float, default=1.0)
    parser.add_argument("--block-size", default="16MiB")
    parser.add_argument("--repeat", type=int, default=2, help="cold/warm runs; best counts")
    parser.add_argument("--ranges", type=int, default=200)
    parser.add_argument("--data-dir", default="/var/tmp", help="server files and local copies")
    parser.add_argument(
        "--sweep",
        default="",
        help="block sizes to compare (e.g. 8MiB,16MiB,32MiB,64MiB): cold whole read and cold "
        "random 1 MiB reads of the large object at each, then stop",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import boto3
    import s3fs
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config as BotoConfig

    from tiercache import TierCacheFileSystem
    from tiercache.cache import close_all
    from tiercache.demo.server import start_s3rver
    from tiercache.sizes import parse_size

    size = int(args.object_gib * GiB) // MiB * MiB
    block = parse_size(args.block_size)
    token = f"large-objects-{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix=f"tiercache-{token}-", dir=args.data_dir))
    ram = Path("/dev/shm") / f"tiercache-{token}"
    results: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    server = None
    try:
        local = work / "local"
        local.mkdir()
        say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
        say(f"writing {size / GiB:.1f} GiB object, model, parquet under {work} ...")
        make_file(local / "big.bin", size)
        model = make_model(local, args.model_files, int(args.model_gib * GiB))
        make_parquet(local / "table.parquet", int(args.parquet_gib * GiB))
        server = start_s3rver(work / "s3rver")
        server.create_bucket(BUCKET)
        client = boto3.client(
            "s3",
            endpoint_url=server.endpoint,
            aws_access_key_id="S3RVER",
            aws_secret_access_key="S3RVER",
            region_name="us-east-1",
            config=BotoConfig(s3={"addressing_style": "path"}, max_pool_connections=32),
        )
        up = TransferConfig(multipart_threshold=64 * MiB, multipart_chunksize=64 * MiB)
        say("uploading ...")
        for path in [local / "big.bin", local / "table.parquet", *model]:
            key = ("model/" if path in model else "") + path.name
            client.upload_file(str(path), BUCKET, key, Config=up)

        config = {
            "tiers": [
                {"name": "ram", "path": str(ram), "capacity": size + 2 * block,
                 "eviction": "lru", "verify": "on-change"},
                {"name": "ssd", "path": str(work / "ssd"), "capacity": 3 * size, "eviction": "lru"},
            ],
            "origin": {"block_size": block},
        }  # fmt: skip
        options = server.options

        def fresh(block_size: int = block) -> Any:
            """A cache with nothing in it, as a new node would start."""
            close_all()
            TierCacheFileSystem.clear_instance_cache()
            shutil.rmtree(ram, ignore_errors=True)
            shutil.rmtree(work / "ssd", ignore_errors=True)
            gc.collect()
            config["origin"] = {"block_size": block_size}
            return TierCacheFileSystem(config=config, target_protocol="s3", target_options=options)

        if args.sweep:
            rng = random.Random(0)
            offsets = [rng.randrange(0, size - MiB) for _ in range(args.ranges)]
            for text in args.sweep.split(","):
                block_size = parse_size(text)
                times = []
                for _ in range(args.repeat):
                    fs = fresh(block_size)
                    started = time.perf_counter()
                    assert len(fs.cat_file(f"{BUCKET}/big.bin")) == size
                    times.append(time.perf_counter() - started)
                fs = fresh(block_size)
                latencies, hits = [], []
                for offset in offsets:
                    before = fs.stats()["origin"]["bytes"]
                    started = time.perf_counter()
                    fs.cat_file(f"{BUCKET}/big.bin", offset, offset + MiB)
                    took = time.perf_counter() - started
                    fetched = fs.stats()["origin"]["bytes"] > before
                    (latencies if fetched else hits).append(took)
                results.append({
                    "case": "block size sweep", "config": text,
                    "MiB/s": rate(size, min(times)),
                    "miss p50 ms": 1000 * statistics.median(latencies),
                    "hit p50 ms": 1000 * statistics.median(hits) if hits else None,
                    "reads that fetched": len(latencies),
                    "origin MiB/read": fs.stats()["origin"]["bytes"] / len(offsets) / MiB,
                })  # fmt: skip
            columns = ["case", "config", "MiB/s", "miss p50 ms", "hit p50 ms",
                       "reads that fetched", "origin MiB/read"]  # fmt: skip
            extra = {"object_bytes": size, "ranges": len(offsets)}
            report("block sizes", results, columns, args.json, extra)
            return

        # -- cold whole read ----------------------------------------------------------------
        say("cold whole reads ...")
        transfer = TransferConfig(
            max_concurrency=16, multipart_chunksize=16 * MiB, multipart_threshold=16 * MiB,
            preferred_transfer_client="classic",
        )  # fmt: skip
        t_s3t = best(
            args.repeat,
            lambda: client.download_fileobj(BUCKET, "big.bin", Sink(size), Config=transfer),
        )
        plain = s3fs.S3FileSystem(**options, skip_instance_cache=True)
        t_s3fs = best(1, lambda: plain.cat_file(f"{BUCKET}/big.bin"))
        cold_times = []
        for _ in range(args.repeat):
            fs = fresh()
            started = time.perf_counter()
            data = fs.cat_file(f"{BUCKET}/big.bin")
            cold_times.append(time.perf_counter() - started)
            assert len(data) == size
            del data
        t_cold = min(cold_times)
        origin_bytes = fs.stats()["origin"]["bytes"]
        results += [
            {"case": "cold whole read", "config": "s3transfer 16 threads x 16 MiB",
             "MiB/s": rate(size, t_s3t), "ratio": 1.0},
            {"case": "cold whole read", "config": "s3fs cat_file (one stream)",
             "MiB/s": rate(size, t_s3fs), "ratio": t_s3t / t_s3fs},
            {"case": "cold whole read", "config": "tiercache cat_file",
             "MiB/s": rate(size, t_cold), "ratio": t_s3t / t_cold,
             "vs s3fs": t_s3fs / t_cold, "origin MiB": origin_bytes / MiB},
        ]  # fmt: skip

        # -- warm whole read ------------------------------------------------------------------
        say("warm whole reads ...")

        def read_local() -> None:
            with open(local / "big.bin", "rb") as f:
                f.read()

        read_local()  # in the page cache
        t_local = best(args.repeat + 1, read_local)
        t_warm = best(args.repeat + 1, lambda: fs.cat_file(f"{BUCKET}/big.bin"))
        tiers = fs.stats()["tiers"]
        results += [
            {"case": "warm whole read", "config": "local file, page cache",
             "MiB/s": rate(size, t_local), "ratio": 1.0},
            {"case": "warm whole read", "config": "tiercache cat_file, RAM tier",
             "MiB/s": rate(size, t_warm), "ratio": t_local / t_warm,
             "origin MiB": (fs.stats()["origin"]["bytes"] - origin_bytes) / MiB,
             "ram blocks": tiers["ram"]["entries"]},
        ]  # fmt: skip

        # -- correct from both tiers, whole and by range ------------------------------------
        say("correctness from the RAM and the SSD tier ...")
        with open(local / "big.bin", "rb") as f:
            expected = zlib.crc32(f.read())
        probe = random.Random(1).randrange(0, size - 3 * block)
        with open(local / "big.bin", "rb") as f:
            f.seek(probe)
            expected_range = f.read(3 * block)
        checks = {"ram": zlib.crc32(fs.cat_file(f"{BUCKET}/big.bin")) == expected}
        checks["ram, range"] = (
            fs.cat_file(f"{BUCKET}/big.bin", probe, probe + 3 * block) == expected_range
        )
        # A RAM tier of 2 blocks: every block of the object is demoted to the SSD tier.
        config["tiers"][0]["capacity"] = 2 * block
        fs = fresh()
        assert zlib.crc32(fs.cat_file(f"{BUCKET}/big.bin")) == expected
        fs.cache.engine.wait_idle()  # demotions are copied in the background
        started = time.perf_counter()
        checks["ssd"] = zlib.crc32(fs.cat_file(f"{BUCKET}/big.bin")) == expected
        t_ssd = time.perf_counter() - started
        checks["ssd, range"] = (
            fs.cat_file(f"{BUCKET}/big.bin", probe, probe + 3 * block) == expected_range
        )
        ssd_blocks = fs.stats()["tiers"]["ssd"]["entries"]
        config["tiers"][0]["capacity"] = size + 2 * block
        results.append({
            "case": "whole read from the SSD tier", "config": "verify = always (crc32)",
            "MiB/s": rate(size, t_ssd), "ratio": t_local / t_ssd,
        })  # fmt: skip
        extra["correct"] = checks
        extra["ssd_blocks"] = ssd_blocks
        assert all(checks.values()), checks

        # -- random 1 MiB ranges ------------------------------------------------------------
        say("random range reads ...")
        rng = random.Random(0)
        offsets = [rng.randrange(0, size - MiB) for _ in range(args.ranges)]
        fs = fresh()
        for phase in ("cold", "warm"):
            latencies, fetched = [], []
            for offset in offsets:
                before = fs.stats()["origin"]["bytes"]
                started = time.perf_counter()
                got = fs.cat_file(f"{BUCKET}/big.bin", offset, offset + MiB)
                latencies.append(time.perf_counter() - started)
                fetched.append(fs.stats()["origin"]["bytes"] - before)
                assert len(got) == MiB
            latencies.sort()
            results.append({
                "case": f"random 1 MiB range, {phase}", "config": "tiercache cat_file",
                "p50 ms": 1000 * statistics.median(latencies),
                "p99 ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
                "origin MiB/read": sum(fetched) / len(fetched) / MiB,
                "max blocks/read": max(-(-f // block) for f in fetched),
            })  # fmt: skip

        # -- one Parquet row group ------------------------------------------------------------
        say("parquet ...")
        import pyarrow.parquet as pq

        fs = fresh()
        with fs.open(f"{BUCKET}/table.parquet") as f:
            pf = pq.ParquetFile(f)
            group = pf.metadata.num_row_groups // 2
            started = time.perf_counter()
            pf.read_row_group(group)
            t_group = time.perf_counter() - started
            meta = pf.metadata
        group_bytes = meta.row_group(group).column(0).total_compressed_size
        footer = meta.serialized_size + 8
        fetched = fs.stats()["origin"]["bytes"]
        results.append({
            "case": "one Parquet row group, cold", "config": "pq.ParquetFile(fs.open())",
            "row group MiB": group_bytes / MiB, "origin MiB": fetched / MiB,
            "limit MiB": (group_bytes + footer + 2 * block) / MiB, "seconds": t_group,
        })  # fmt: skip

        # -- the model directory --------------------------------------------------------------
        say("model directory ...")
        from safetensors.torch import load_file

        from tiercache.torch import load_safetensors

        model_bytes = sum(p.stat().st_size for p in model)
        fs = fresh()
        started = time.perf_counter()
        done = fs.warm(fs.find(f"{BUCKET}/model/"), progress=False)
        t_warm_dir = time.perf_counter() - started
        assert done["bytes"] == model_bytes and not done["errors"]
        results.append({
            "case": "tiercache warm of the model directory", "config": "fs.warm (the CLI's)",
            "MiB/s": rate(model_bytes, t_warm_dir),
            "ratio": rate(model_bytes, t_warm_dir) / rate(size, t_s3t),
        })  # fmt: skip

        def load_local() -> None:
            for p in model:
                load_file(str(p))  # mapped lazily: no byte read until a tensor is used

        def load_local_read() -> None:
            for p in model:  # every byte in memory, as load_safetensors leaves them
                {k: v.clone() for k, v in load_file(str(p)).items()}

        def load_cached() -> None:
            for p in model:
                load_safetensors(f"{BUCKET}/model/{p.name}", fs=fs)

        load_local()
        t_load_lazy = best(args.repeat, load_local)
        t_load_local = best(args.repeat, load_local_read)
        cold_loads = []
        for _ in range(args.repeat):
            fs = fresh()
            cold_loads.append(best(1, load_cached))
        t_load_cold = min(cold_loads)
        t_load_warm = best(args.repeat, load_cached)
        results += [
            {"case": "load the model", "config": "safetensors load_file, local, lazy",
             "MiB/s": rate(model_bytes, t_load_lazy)},
            {"case": "load the model", "config": "load_file + every byte read, local",
             "MiB/s": rate(model_bytes, t_load_local), "ratio": 1.0},
            {"case": "load the model", "config": "load_safetensors, cold",
             "MiB/s": rate(model_bytes, t_load_cold), "ratio": t_load_local / t_load_cold},
            {"case": "load the model", "config": "load_safetensors, warm",
             "MiB/s": rate(model_bytes, t_load_warm), "ratio": t_load_local / t_load_warm},
        ]  # fmt: skip
        extra |= {
            "object_bytes": size,
            "block_size": block,
            "model_bytes": model_bytes,
            "machine": f"{os.cpu_count()} cores",
            "server": "s3rver 3.7.1 on loopback",
        }
    finally:
        with contextlib.suppress(Exception):
            close_all()
        if server is not None:
            server.stop()
        shutil.rmtree(ram, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    columns = ["case", "config", "MiB/s", "ratio", "vs s3fs", "origin MiB", "p50 ms", "p99 ms",
               "origin MiB/read", "max blocks/read", "row group MiB", "limit MiB",
               "ram blocks"]  # fmt: skip
    report("large objects", results, columns, args.json, extra)


if __name__ == "__main__":
    main()
