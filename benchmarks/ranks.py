"""Ranks of one node sharing one cache: origin bytes per epoch with ``torchrun`` ranks.

    python benchmarks/ranks.py [--size 256MiB] [--sampler shard|distributed] [--json out.json]

The same token shards and the ``training`` policy with RAM + SSD together half the data,
read for 3 epochs by ``torchrun --standalone --nproc-per-node=N`` (gloo) with N = 1 and 2,
each rank through 2 DataLoader workers and an all-reduce per batch (DDP's lockstep), both
ranks sharing the node's cache (one engine, embedded in whichever rank needed it first,
or ``--service``: a ``tiercache engine`` process). Origin bytes per epoch come from moto's
request recorder. With the cache holding half the data, the optimum fetches half the data
per epoch after the first; each rank's sampler hints its own order and the engine merges
them into one plan, so two ranks should need no more than one (the allowance: half the
data + 5%).

``--sampler shard``: ``ShardShuffleSampler`` (ranks stride one global order);
``--sampler distributed``: ``HintedSampler(DistributedSampler(...))`` (a global shuffle).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def rank_main(job: dict[str, Any]) -> None:
    """One rank: 3 epochs; rank 0 meters the origin between barriers."""
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader, DistributedSampler

    from tiercache.cli.demo import demo_config
    from tiercache.torch import HintedSampler, ShardShuffleSampler, TokenDataset

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    config = demo_config("training", Path(job["root"]), job["ram"], job["ssd"],
                         shm=Path(job["shm"]))  # fmt: skip
    ds = TokenDataset(job["url"], seq_len=job["seq_len"], dtype="uint32",
                      storage_options=job["options"], cache=config)  # fmt: skip
    if job["sampler"] == "shard":
        sampler: Any = ShardShuffleSampler(ds, seed=0, window=8)
    else:
        sampler = HintedSampler(DistributedSampler(ds, seed=0), ds)
    loader = DataLoader(ds, batch_size=64, sampler=sampler, num_workers=2,
                        persistent_workers=True, multiprocessing_context="fork")  # fmt: skip
    rows = []
    for epoch in range(job["epochs"]):
        dist.barrier()
        if rank == 0:
            _recorder(job["endpoint"], "reset-recording")
            _recorder(job["endpoint"], "start-recording")
        dist.barrier()
        started = time.perf_counter()
        sampler.set_epoch(epoch)  # hints the epoch: prefetch starts here, metered
        samples = 0
        step = torch.zeros(1)
        for batch in loader:
            samples += len(batch)
            step[0] = float(batch[:, 0].sum())
            dist.all_reduce(step)  # what DDP does every step: the ranks move in lockstep
        seconds = time.perf_counter() - started
        dist.barrier()
        if rank == 0:
            stats = ds.stats()
            rows.append({"epoch": epoch + 1, "seconds": seconds,
                         "origin_bytes": _origin_bytes(job["endpoint"], job["sizes"]),
                         "rank0_samples_per_s": samples / seconds,
                         "cache": {k: stats[k] for k in ("misses", "not_admitted",
                                                         "singleflight_waits", "prefetch")},
                         "origin_reads": stats["origin"]["reads"]})  # fmt: skip
    if rank == 0:
        Path(job["out"]).write_text(json.dumps({"epochs": rows, "stats": ds.stats()}))
    dist.barrier()
    dist.destroy_process_group()


def _recorder(endpoint: str, action: str) -> bytes:
    method = "GET" if action == "download-recording" else "POST"
    req = urllib.request.Request(f"{endpoint}/moto-api/recorder/{action}", method=method)
    with urllib.request.urlopen(req) as resp:
        return bytes(resp.read())


def _origin_bytes(endpoint: str, sizes: dict[str, int]) -> int:
    total = 0
    for line in _recorder(endpoint, "download-recording").decode().splitlines():
        req = json.loads(line)
        url = req.get("url", "").split("?")[0]
        if req.get("method") == "GET" and "/moto-api/" not in url:
            total += sizes.get(url.split("/", 3)[-1], 0)
    return total


def run(nproc: int, args: argparse.Namespace, env: dict[str, Any], root: Path) -> dict[str, Any]:
    token = uuid.uuid4().hex[:8]
    shm = Path("/dev/shm") / f"tiercache-ranks-{token}"
    base = root / f"tiers-{token}"
    size = env["dataset_bytes"]
    job = {
        **env,
        "root": str(base),
        "shm": str(shm),
        "ram": size // 4,
        "ssd": size // 4,
        "sampler": args.sampler,
        "epochs": args.epochs,
        "out": str(root / f"out-{nproc}.json"),
    }
    service = None
    try:
        if args.service:
            from tiercache.cli.demo import demo_config

            config = demo_config("training", base, job["ram"], job["ssd"], shm=shm)
            toml = root / f"service-{token}.toml"
            toml.write_text(_toml(config))
            service = subprocess.Popen(
                [sys.executable, "-m", "tiercache", "engine", "--config", str(toml), "--json"],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert service.stdout is not None
            assert json.loads(service.stdout.readline())["event"] == "ready"
        envvars = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
        subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone",
             f"--nproc_per_node={nproc}", str(HERE / "ranks.py"), "--rank", json.dumps(job)],
            env=envvars, check=True, timeout=3600,
        )  # fmt: skip
        return dict(json.loads(Path(job["out"]).read_text()))
    finally:
        if service is not None:
            service.terminate()
            service.wait(60)
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


def _toml(config: Any) -> str:
    lines = []
    for tier in config.tiers:
        lines += ["[[tiers]]", f'name = "{tier.name}"', f'path = "{tier.path}"',
                  f"capacity = {tier.capacity}", f"eviction = {_inline(tier.eviction)}",
                  f'verify = "{tier.verify}"', "min_free = 0"]  # fmt: skip
    lines += ["[index]", f'path = "{config.index_path}"', "[validation]", 'mode = "ttl"',
              "ttl_seconds = 600", "[promotion]", "hits = 0", "[prefetch]",
              f"depth_bytes = {config.prefetch.depth_bytes}",
              f"concurrency = {config.prefetch.concurrency}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--rank":
        rank_main(json.loads(sys.argv[2]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="256MiB")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--sampler", choices=["shard", "distributed"], default="shard")
    p.add_argument("--service", action="store_true", help="run `tiercache engine` for the node")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()

    from tiercache.demo.data import token_chunks
    from tiercache.demo.server import start_s3_server
    from tiercache.sizes import parse_size
    from tiercache.torch import write_tokens

    size, seq_len = parse_size(args.size), 2048
    root = Path(tempfile.mkdtemp(prefix="tiercache-ranks-"))
    rec = {"MOTO_ENABLE_RECORDING": "True", "MOTO_RECORDER_FILEPATH": str(root / "rec.jsonl")}
    results: dict[str, Any] = {"args": vars(args), "runs": {}}
    try:
        with start_s3_server(env=rec) as server:
            server.create_bucket("ranks")
            arrays = [c.astype("uint32") for c in token_chunks(size // 2, 2 << 20, seed=0)]
            url = "s3://ranks/tokens"
            write_tokens(arrays, url, shard_bytes=4 << 20, dtype="uint32",
                         storage_options=server.options)  # fmt: skip
            import s3fs

            fs = s3fs.S3FileSystem(**server.options, skip_instance_cache=True)
            sizes = {p["name"]: p["size"] for p in fs.ls("ranks/tokens", detail=True)}
            dataset = sum(sizes.values()) // (seq_len * 4) * seq_len * 4
            env = {"url": url, "options": server.options, "endpoint": server.endpoint,
                   "sizes": sizes, "seq_len": seq_len, "dataset_bytes": dataset}  # fmt: skip
            for nproc in (1, 2):
                print(f"{nproc} rank(s)", file=sys.stderr, flush=True)
                results["runs"][nproc] = run(nproc, args, env, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    allowed = 0.55 * dataset
    print("| ranks | MiB from S3 per epoch | epochs 2+ / allowance | rank 0 samples/s |")
    print("|---|---|---|---|")
    for nproc, run_result in results["runs"].items():
        rows = run_result["epochs"]
        mib = " / ".join(f"{r['origin_bytes'] / 2**20:,.0f}" for r in rows)
        ratio = " / ".join(f"{r['origin_bytes'] / allowed:.2f}" for r in rows[1:])
        rate = " / ".join(f"{r['rank0_samples_per_s']:,.0f}" for r in rows)
        print(f"| {nproc} | {mib} | {ratio} | {rate} |")
    results["allowed_bytes"] = allowed
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
