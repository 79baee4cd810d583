"""``tiercache demo``: the main job, end to end, on an embedded default.

With no arguments: start an S3-compatible server on loopback (moto, in a child process),
write a synthetic token dataset into it (512 MiB in 4 MiB shards), and train a small model
for three epochs through a DataLoader with two worker processes reading via tiercache with
the ``training`` policy, the RAM tier smaller than the dataset. Each epoch prints samples/s,
MB/s, the share of requests each tier answered, origin bytes and data-wait; ``--json``
prints the same as JSON. The demo owns its tier directories and removes them at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from ..config import PRESET_DIR, Config, parse_config, preset_names
from ..sizes import format_size, parse_size

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="train a small model from S3 through the tiers and report every epoch",
        description=(
            "Start an S3-compatible server on loopback, write a synthetic token dataset, and "
            "train through a DataLoader (2 workers) reading via tiercache; prints per-epoch "
            "samples/s, MB/s, hit ratio per tier, origin bytes and data-wait."
        ),
    )
    p.add_argument("--size", default="512MiB", help="synthetic dataset size (default 512MiB)")
    p.add_argument("--shard-size", default="4MiB", help="bytes per shard (default 4MiB)")
    p.add_argument("--epochs", type=int, default=3, help="epochs to train (default 3)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    p.add_argument("--batch-size", type=int, default=64, help="samples per batch (default 64)")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per sample (default 2048)")
    p.add_argument("--policy", default="training",
                   help=f"policy preset or TOML path (default training; presets: "
                        f"{', '.join(preset_names())})")  # fmt: skip
    p.add_argument(
        "--ram",
        default="50%",
        help="RAM tier capacity: bytes or a %% of the dataset (default 50%%)",
    )
    p.add_argument(
        "--ssd",
        default="100%",
        help="SSD tier capacity: bytes or a %% of the dataset (default 100%%)",
    )
    p.add_argument(
        "--window",
        type=int,
        default=8,
        help="shards mixed at a time by the shard-aware shuffle (default 8)",
    )
    p.add_argument(
        "--no-prefetch",
        action="store_true",
        help="do not pass the sampler's order to the cache (no hints, no prefetch)",
    )
    p.add_argument("--source", metavar="URL",
                   help="read token files (.bin uint16 / .npy) from this bucket prefix or "
                        "directory instead of the synthetic dataset")  # fmt: skip
    p.add_argument("--dtype", default="uint16", help="token dtype of .bin files in --source")
    p.add_argument("--metrics-port", type=int, default=0,
                   help="serve Prometheus metrics on this loopback port (default: a free one; "
                        "-1: off)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the epochs as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _capacity(text: str, dataset_bytes: int, what: str) -> int:
    text = text.strip()
    if text.endswith("%"):
        try:
            share = float(text[:-1]) / 100
        except ValueError:
            raise ValueError(f"--{what} {text!r}: expected bytes ('256MiB') or a share "
                             "of the dataset ('50%')") from None  # fmt: skip
        return max(1, int(dataset_bytes * share))
    return parse_size(text, key=f"--{what}")


def demo_config(policy: str, root: Path, ram: int, ssd: int, *, shm: Path) -> Config:
    """The chosen policy with its tiers moved into directories the demo owns."""
    path = Path(policy).expanduser()
    if not (policy.endswith(".toml") or os.sep in policy or path.is_file()):
        path = PRESET_DIR / f"{policy}.toml"
        if not path.is_file():
            raise ValueError(f"unknown policy preset {policy!r}; presets: "
                             f"{', '.join(preset_names())} (or give a .toml path)")  # fmt: skip
    data = tomllib.loads(path.read_text())
    tiers = data.get("tiers") or []
    for i, tier in enumerate(tiers):
        name = str(tier.get("name", f"tier{i}"))
        fast = i == 0 and len(tiers) > 1
        tier["path"] = str((shm if fast else root) / name)
        if i == 0:
            tier["capacity"] = ram
        elif i == len(tiers) - 1:
            tier["capacity"] = ssd
        tier["min_free"] = 0
    data["index"] = {"path": str(root / "index")}
    data.pop("trace", None)
    return parse_config(data, origin=f"{path} (tiers moved into {root})")


def run(args: argparse.Namespace) -> int:
    if args.epochs < 1 or args.workers < 0 or args.batch_size < 1 or args.seq_len < 1:
        raise ValueError("--epochs, --batch-size and --seq-len must be >= 1, --workers >= 0")
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError:
        raise ValueError("the demo needs torch: pip install torch==2.13.0 (or "
                         "pip install 'tiercache[torch]')") from None  # fmt: skip
    progress = not args.no_progress
    token = uuid.uuid4().hex[:8]
    root = Path(tempfile.mkdtemp(prefix=f"tiercache-demo-{token}-"))
    shm_base = Path("/dev/shm") if Path("/dev/shm").is_dir() else root
    shm = shm_base / f"tiercache-demo-{token}"
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, root, True)
        stack.callback(shutil.rmtree, shm, True)
        stack.callback(_close_caches)
        return _run(args, stack, root, shm, progress)
    return 1  # pragma: no cover - ExitStack does not swallow exceptions


def _close_caches() -> None:
    from ..cache import close_all

    close_all()


def _say(args: argparse.Namespace, text: str) -> None:
    print(text, file=sys.stderr if args.json else sys.stdout, flush=True)


def _run(args: argparse.Namespace, stack: contextlib.ExitStack, root: Path, shm: Path,
         progress: bool) -> int:  # fmt: skip
    import torch
    from torch.utils.data import DataLoader

    from ..demo.data import write_synthetic
    from ..demo.model import Trainer
    from ..demo.run import EpochStart, run_epochs, table_header, table_row
    from ..torch import ShardShuffleSampler, TokenDataset

    storage_options: dict[str, Any] = {}
    if args.source:
        url = args.source
        dtype = args.dtype
    else:
        from ..demo.server import start_s3_server

        size = parse_size(args.size, key="--size")
        shard = parse_size(args.shard_size, key="--shard-size")
        if size < shard:
            raise ValueError(f"--size {args.size} is smaller than one shard ({args.shard_size})")
        server = stack.enter_context(start_s3_server())
        storage_options = server.options
        server.create_bucket("tiercache-demo")
        url = "s3://tiercache-demo/tokens"
        _say(args, f"S3 server (moto) on {server.endpoint}; writing {format_size(size)} of "
                   f"tokens in {format_size(shard)} shards to {url}")  # fmt: skip
        write_synthetic(url, size, shard, storage_options, progress=progress)
        dtype = "uint16"

    # The dataset's size decides the tier sizes, so list it with the origin directly first.
    probe = TokenDataset(url, seq_len=args.seq_len, dtype=dtype,
                         storage_options=storage_options, cache=False)  # fmt: skip
    itemsize = 2 if dtype == "uint16" else 4
    dataset_bytes = len(probe) * args.seq_len * itemsize
    ram = _capacity(args.ram, dataset_bytes, "ram")
    ssd = _capacity(args.ssd, dataset_bytes, "ssd")
    config = demo_config(args.policy, root, ram, ssd, shm=shm)
    dataset = TokenDataset(url, seq_len=args.seq_len, dtype=dtype,
                           storage_options=storage_options, cache=config)  # fmt: skip
    tiers = config.tier_names
    # The engine runs in this process, which lives for the whole run (workers come and go).
    cache = dataset.source.fs.cache
    assert cache.engine is not None

    metrics = None
    if args.metrics_port >= 0:
        with contextlib.suppress(ImportError):
            from ..metrics import serve

            metrics = serve(config, port=args.metrics_port, bind="127.0.0.1")
            stack.callback(metrics.close)
    _say(args, f"dataset: {len(dataset):,} samples of {args.seq_len} tokens in "
               f"{len(dataset.shard_paths)} shards ({format_size(dataset_bytes)}); tiers: "
               + ", ".join(f"{t.name} {format_size(t.capacity)}" for t in config.tiers)
               + f"; policy {args.policy}")  # fmt: skip
    if metrics is not None:
        _say(args, f"Prometheus metrics: {metrics.url}")

    start = EpochStart.now(dataset.stats)  # the sampler's hint starts epoch 1's fetching
    sampler = ShardShuffleSampler(dataset, seed=0, window=args.window,
                                  hint=not args.no_prefetch)  # fmt: skip
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler,
                        num_workers=args.workers, persistent_workers=args.workers > 0,
                        drop_last=False)  # fmt: skip
    torch.set_num_threads(1)  # the workers and the engine need the other core
    trainer = Trainer()

    def show(row: dict[str, Any]) -> None:
        if not args.json:
            print(table_row(row, tiers), flush=True)

    if not args.json:
        print(table_header(tiers), flush=True)
    rows = run_epochs(loader, args.epochs, sample_bytes=args.seq_len * itemsize,
                      step=trainer.step, stats=dataset.stats,
                      total_batches=len(loader), progress=progress,
                      on_epoch=show, start=start)  # fmt: skip
    if args.json:
        print(json.dumps({"epochs": rows, "dataset_bytes": dataset_bytes,
                          "tiers": {t.name: t.capacity for t in config.tiers},
                          "policy": args.policy}, indent=1))  # fmt: skip
    return 0
