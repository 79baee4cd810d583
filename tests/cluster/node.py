"""A reader inside a test node (a network namespace); the node's engine is ``tiercache engine``.

    python -m tests.cluster.node read '<json: {"config", "options", "objects", "order", ...}>'

It reads objects through ``TierCacheFileSystem`` in a given order and checks every byte
against the object it must be (each object's bytes are a function of its seed), printing a
JSON line per finished pass and writing a report at the end.
"""

from __future__ import annotations

import json
import random
import sys
import time
import traceback
from typing import Any


def payload(seed: int, size: int) -> bytes:
    """The bytes of test object ``seed``: the same in the test and in every node."""
    return random.Random(seed).randbytes(size)


def read(args: dict[str, Any]) -> int:
    from tiercache import TierCacheFileSystem

    fs = TierCacheFileSystem(config=args["config"], target_protocol="s3",
                             target_options=args["options"], skip_instance_cache=True)  # fmt: skip
    objects = {name: (seed, size) for name, seed, size in args["objects"]}
    report: dict[str, Any] = {"reads": 0, "bytes": 0, "wrong": [], "errors": []}
    for epoch in range(int(args.get("epochs", 1))):
        for name in args["order"]:
            seed, size = objects[name]
            try:
                got = fs.cat_file(f"{args['bucket']}/{name}")
            except Exception as exc:
                report["errors"].append(f"{name}: {type(exc).__name__}: {exc}")
                traceback.print_exc()
                continue
            report["reads"] += 1
            report["bytes"] += len(got)
            if got != payload(seed, size):
                report["wrong"].append(name)
            if args.get("pause"):
                time.sleep(float(args["pause"]))
        print(json.dumps({"epoch": epoch, "reads": report["reads"]}), flush=True)
    report["stats"] = fs.stats()
    with open(args["out"], "w") as f:
        json.dump(report, f)
    return 0


if __name__ == "__main__":
    command, raw = sys.argv[1], sys.argv[2]
    sys.exit({"read": read}[command](json.loads(raw)))
