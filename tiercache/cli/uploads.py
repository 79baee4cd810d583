"""``tiercache uploads``: what this node wrote that the origin does not hold yet.

Lists pending and failed uploads (and deletes, renames) from the write journal, without
becoming the engine. ``--wait`` waits until everything listed is durable at the origin
(making sure an engine runs to upload it: this process becomes one if none does);
``--retry`` has the engine try failed uploads again now. Exit status: 0 when nothing is
left (or, without ``--wait``, nothing has failed), 1 when failed uploads remain, 2 when
``--timeout`` passed first.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from ..cache import open_cache
from ..sizes import format_size
from ..write.journal import FAILED
from .common import add_config_args, config_from_args


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "uploads",
        help="pending and failed uploads of this node's writes; --wait until durable",
        description="Writes through tiercache are staged on local disk and uploaded in the "
        "background. This lists what is not yet durable at the origin.",
    )
    add_config_args(p)
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.add_argument(
        "--wait", action="store_true", help="wait until everything listed is at the origin"
    )
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="for --wait")
    p.add_argument("--retry", action="store_true", help="retry failed uploads now")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if config.write is None or not config.write.enabled:
        raise ValueError(f'{config.source}: writes are off ([write] mode = "read-only")')
    if not (config.write.path / "journal.lmdb").exists():
        return _report(args, [], waited=False)
    cache = open_cache(config)
    staging = cache.staging
    assert staging is not None
    if args.retry:
        reply, _ = cache.engine_call("uploads_retry")
        if not args.json:
            print(f"retrying {reply.get('retried', 0)} failed upload(s)")
    if not args.wait:
        return _report(args, [op.public() for op in staging.journal.pending()], waited=False)
    left = _wait(cache, args.timeout, progress=not args.json)
    return _report(args, left, waited=True)


def _wait(cache: Any, timeout: float | None, progress: bool) -> list[dict[str, Any]]:
    """Wait like ``fs.sync()``, with a progress bar of the bytes still to upload."""
    from tqdm import tqdm

    journal = cache.staging.journal
    limit = journal.last_seq()
    deadline = None if timeout is None else time.monotonic() + timeout
    first = [op for op in journal.pending() if op.seq <= limit]
    total = sum(op.size for op in first if op.kind == "put")
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress,
               desc=f"uploading {len(first)}")  # fmt: skip
    done = 0
    kicked = 0.0
    try:
        while True:
            left = [op for op in journal.pending() if op.seq <= limit]
            if not left or all(op.state == FAILED for op in left):
                return [op.public() for op in left]
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return [op.public() for op in left]
            remaining = sum(op.size for op in left if op.kind == "put")
            bar.update(max(0, total - remaining - done))
            done = total - remaining
            if now - kicked > 1.0:  # make sure an engine runs (this process, if none does)
                cache.engine_call("uploads", _oneway=True)
                kicked = now
            time.sleep(0.1)
    finally:
        bar.close()


def _report(args: argparse.Namespace, items: list[dict[str, Any]], waited: bool) -> int:
    failed = [i for i in items if i["state"] == FAILED]
    if args.json:
        print(json.dumps({"pending": items, "failed": len(failed)}))
    elif not items:
        print("nothing pending: every write is durable at the origin")
    else:
        total = sum(i["size"] for i in items if i["op"] == "put")
        print(f"{len(items)} operation(s) not yet at the origin, {format_size(total)}:")
        for i in items:
            extra = f" from {i['from']}" if "from" in i else ""
            print(
                f"  {i['state']:<8} {i['op']:<6} {i['url']}{extra}  {format_size(i['size'])}"
                f"  {i['age_seconds']:.0f} s old, {i['attempts']} attempt(s)"
            )
            if "error" in i:
                print(f"           {i['error']}")
    if failed:
        return 1
    if waited and items:
        return 2  # the timeout passed
    return 0
