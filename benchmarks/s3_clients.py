"""The S3 data path for ranged reads: tiercache's own against the libraries that could replace it.

    python benchmarks/s3_clients.py              # table, a 2 GiB object
    python benchmarks/s3_clients.py --json --gib 1

The workload block caching puts on the origin: one large object read as 16 MiB ranged GETs,
16 in flight (a sliding window), every byte landing in one preallocated buffer. Against
npm's ``s3rver`` on loopback, in one run, the same object for every client:

* tiercache (``tiercache.ranged.read_span``: presigned URL, ``http.client``, the body
  received straight into the destination), on 16 threads;
* obstore (the Rust ``object_store`` bindings), ``get_range_async``, 16 at a time;
* the AWS CRT (``awscrt.s3``, what boto3's CRT transfer uses), one GET split by the CRT
  into 16 MiB parts, its body callbacks copying into the buffer;
* s3transfer's classic ``download_fileobj`` (16 threads, 16 MiB parts) as the reference.

Each figure: throughput (best of ``--repeat``) and the benchmark process's CPU seconds
for it; ratios are to s3transfer measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))
from _common import Sink, report  # noqa: E402

GiB, MiB = 1 << 30, 1 << 20
PART, WINDOW = 16 * MiB, 16
BUCKET, KEY = "clients", "big.bin"


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(repeat: int, fn: Any) -> tuple[float, float]:
    """(seconds, CPU seconds) of the fastest of ``repeat`` runs."""
    runs = []
    for _ in range(repeat):
        gc.collect()
        c0, t0 = cpu(), time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t0, cpu() - c0))
    return min(runs)


def spans(size: int) -> list[tuple[int, int]]:
    return [(s, min(size, s + PART)) for s in range(0, size, PART)]


def tiercache_ranged(options: dict[str, Any], size: int) -> Any:
    import fsspec

    from tiercache.config import OriginConfig
    from tiercache.counters import Counters
    from tiercache.fs import origin_options
    from tiercache.origin import Origin
    from tiercache.ranged import Pin, head, read_span

    counters = Counters(Path(tempfile.mkdtemp(prefix="tiercache-clients-")))
    fs = fsspec.filesystem("s3", **origin_options("s3", options), skip_instance_cache=True)
    origin = Origin(fs, OriginConfig(), counters)
    found = head(origin, f"{BUCKET}/{KEY}")
    pin = Pin(f"{BUCKET}/{KEY}", found.size, found.version, found.etag, found.version_id)

    def run() -> None:
        out = bytearray(size)
        view = memoryview(out)
        with ThreadPoolExecutor(WINDOW) as pool:
            list(
                pool.map(
                    lambda sp: read_span(origin, pin, sp, view[sp[0] : sp[1]], None), spans(size)
                )
            )

    return run


def obstore_ranged(endpoint: str, size: int) -> Any:
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        BUCKET, endpoint=endpoint, access_key_id="S3RVER", secret_access_key="S3RVER",
        region="us-east-1", client_options={"allow_http": True},
        virtual_hosted_style_request=False,
    )  # fmt: skip

    def run() -> None:
        out = bytearray(size)
        view = memoryview(out)

        async def all_ranges() -> None:
            gate = asyncio.Semaphore(WINDOW)

            async def one(start: int, end: int) -> None:
                async with gate:
                    data = await obstore.get_range_async(store, KEY, start=start, end=end)
                    view[start:end] = memoryview(data)

            await asyncio.gather(*(one(s, e) for s, e in spans(size)))

        asyncio.run(all_ranges())

    return run


def crt_ranged(endpoint: str, size: int) -> Any:
    from awscrt.auth import AwsCredentialsProvider
    from awscrt.http import HttpHeaders, HttpRequest
    from awscrt.io import ClientBootstrap, DefaultHostResolver, EventLoopGroup
    from awscrt.s3 import S3Client, S3RequestTlsMode, S3RequestType

    loops = EventLoopGroup()
    bootstrap = ClientBootstrap(loops, DefaultHostResolver(loops))
    client = S3Client(
        bootstrap=bootstrap, region="us-east-1",
        credential_provider=AwsCredentialsProvider.new_static("S3RVER", "S3RVER"),
        part_size=PART, throughput_target_gbps=10.0, tls_mode=S3RequestTlsMode.DISABLED,
    )  # fmt: skip
    host = urllib.parse.urlsplit(endpoint).netloc

    def run() -> None:
        out = bytearray(size)
        view = memoryview(out)
        lock = threading.Lock()

        def on_body(chunk: bytes, offset: int, **_: Any) -> None:
            with lock:
                view[offset : offset + len(chunk)] = chunk

        request = HttpRequest("GET", f"/{BUCKET}/{KEY}", HttpHeaders([("host", host)]))
        made = client.make_request(type=S3RequestType.GET_OBJECT, request=request, on_body=on_body)
        made.finished_future.result()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data-dir", default="/var/tmp")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config as BotoConfig

    from tiercache.demo.server import start_s3rver

    size = int(args.gib * GiB) // MiB * MiB
    work = Path(
        tempfile.mkdtemp(prefix=f"tiercache-clients-{uuid.uuid4().hex[:6]}-", dir=args.data_dir)
    )
    server = start_s3rver(work / "s3rver")
    rows: list[dict[str, Any]] = []
    try:
        server.create_bucket(BUCKET)
        client = boto3.client(
            "s3", endpoint_url=server.endpoint, aws_access_key_id="S3RVER",
            aws_secret_access_key="S3RVER", region_name="us-east-1",
            config=BotoConfig(s3={"addressing_style": "path"}, max_pool_connections=32),
        )  # fmt: skip
        local = work / "big.bin"
        with open(local, "wb") as f:
            chunk = os.urandom(64 * MiB)
            for _ in range(size // len(chunk)):
                f.write(chunk)
            f.write(chunk[: size % len(chunk)])
        client.upload_file(
            str(local), BUCKET, KEY, Config=TransferConfig(multipart_chunksize=64 * MiB)
        )
        local.unlink()
        reference = TransferConfig(
            max_concurrency=WINDOW, multipart_chunksize=PART, multipart_threshold=PART,
            preferred_transfer_client="classic",
        )  # fmt: skip
        cases = [
            ("s3transfer download_fileobj (reference)",
             lambda: client.download_fileobj(BUCKET, KEY, Sink(size), Config=reference)),
            ("tiercache ranged (s3direct)", tiercache_ranged(server.options, size)),
            ("obstore get_range_async", obstore_ranged(server.endpoint, size)),
            ("AWS CRT (awscrt.s3)", crt_ranged(server.endpoint, size)),
        ]  # fmt: skip
        measured = {}
        for _ in range(args.repeat):  # interleaved, so drift on a shared machine hits all alike
            for name, run in cases:
                try:
                    seconds, cpu_s = measure(1, run)
                except Exception as exc:  # a client that cannot run here is reported, not fatal
                    measured.setdefault(name, (float("inf"), 0.0, f"{type(exc).__name__}: {exc}"))
                    continue
                best_s = measured.get(name, (float("inf"), 0.0, ""))
                if seconds < best_s[0]:
                    measured[name] = (seconds, cpu_s, "")
        base = measured[cases[0][0]][0]
        for name, _ in cases:
            seconds, cpu_s, error = measured[name]
            rows.append({
                "client": name,
                "MiB/s": size / seconds / MiB if error == "" else None,
                "ratio": base / seconds if error == "" else None,
                "CPU s": cpu_s if error == "" else None,
                "error": error or None,
            })  # fmt: skip
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(
        "S3 ranged reads: 16 MiB parts, 16 in flight",
        rows,
        ["client", "MiB/s", "ratio", "CPU s", "error"],
        args.json,
        {"object_bytes": size, "server": "s3rver 3.7.1 on loopback", "cores": os.cpu_count()},
    )


if __name__ == "__main__":
    main()
