"""Cap the loopback S3 server's bandwidth, as a remote origin's link would be.

moto on loopback serves as fast as this machine's CPUs let it, and shares them with the
reader, so a cold epoch against it measures CPU, not the origin. A real bucket is the other
way round: the link is slower than the page cache and the training loop. This caps only the
server's answers (packets *from* its port, on ``lo``) with Linux's ``htb`` queueing
discipline; all other loopback traffic is sent unshaped. It needs ``CAP_NET_ADMIN`` (root)
and is undone on exit. (This kernel has no ``netem``, so latency is not emulated.)
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator


def _tc(*args: str) -> None:
    subprocess.run(["tc", *args], check=True, capture_output=True, text=True)


@contextlib.contextmanager
def capped_origin(
    port: int, rate_mbit: float, dev: str = "lo", *, uploads: bool = False
) -> Iterator[None]:
    """Cap what the server on ``port`` sends to ``rate_mbit``, for the ``with`` body.

    ``dev``: the interface its answers leave by (``lo``; the bridge of namespace nodes).
    ``uploads``: cap what is sent *to* it as well, at the same rate in a class of its own
    (a link is full duplex: reads and writes do not share one budget), and give both
    classes a short queue (64 packets; ``lo``'s default of 1000 packets of 64 KiB holds
    seconds of data at these rates, so a small request would wait behind every upload
    queued before it; this kernel has no fair-queueing qdisc to do better)."""
    if shutil.which("tc") is None:
        raise SystemExit("--origin-mbit needs the tc command (Debian: apt-get install iproute2)")
    try:
        # No default class: packets no filter matches leave unshaped.
        _tc("qdisc", "add", "dev", dev, "root", "handle", "1:", "htb")
    except subprocess.CalledProcessError as exc:
        raise SystemExit(
            f"could not shape loopback traffic ({exc.stderr.strip()}): --origin-mbit needs "
            f"CAP_NET_ADMIN (root) and no other root qdisc on {dev}"
        ) from None
    try:
        rate = f"{rate_mbit}mbit"
        _tc("class", "add", "dev", dev, "parent", "1:", "classid", "1:20", "htb",
            "rate", rate, "ceil", rate, "burst", "256k", "cburst", "256k")  # fmt: skip
        _tc("filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32",
            "match", "ip", "sport", str(port), "0xffff", "flowid", "1:20")  # fmt: skip
        if uploads:
            _tc("class", "add", "dev", dev, "parent", "1:", "classid", "1:21", "htb",
                "rate", rate, "ceil", rate, "burst", "256k", "cburst", "256k")  # fmt: skip
            _tc("filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "2",
                "u32", "match", "ip", "dport", str(port), "0xffff", "flowid", "1:21")  # fmt: skip
            for leaf in ("20", "21"):
                _tc("qdisc", "add", "dev", dev, "parent", f"1:{leaf}", "handle", f"{leaf}:",
                    "pfifo", "limit", "64")  # fmt: skip
        yield
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _tc("qdisc", "del", "dev", dev, "root")
