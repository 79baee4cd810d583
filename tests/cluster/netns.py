"""Nodes on one machine: network namespaces on a bridge, with an S3 server on the host side.

Each node is a namespace (``ip netns``) with one veth pair whose other end is on a bridge on
the host; the bridge holds the host's address, where the S3 server (moto, its own process)
listens. Names start with ``tcc`` and a random tag (interface names are at most 15
characters), addresses come from a private /24 picked at random and checked unused, and
everything is removed on exit, so runs on a shared machine do not collide. Shared by the
tests and ``benchmarks/cluster.py``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import S3

ROOT = Path(__file__).resolve().parents[2]


def available() -> str | None:
    """Why namespaces cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing"
    return None


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", *args] if ns is None else ["ip", "netns", "exec", ns, "ip", *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def _free_subnet() -> ipaddress.IPv4Network:
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{random.randint(200, 250)}.{random.randint(0, 255)}.0/24")
        if f"10.{net.network_address.packed[1]}.{net.network_address.packed[2]}." not in used:
            return net
    raise RuntimeError("no free 10.x.y.0/24 for the test network")


@dataclass
class Node:
    """One namespace: its name, address and the interface inside it."""

    name: str
    address: str
    ifname: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def command(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def popen(self, argv: Sequence[str], env: dict[str, str] | None = None,
              **kwargs: Any) -> subprocess.Popen[bytes]:  # fmt: skip
        proc = subprocess.Popen(self.command(argv), env=env, **kwargs)
        self.processes.append(proc)
        return proc


class Net:
    """A bridge and ``n`` namespaces on it; the host is ``.1``, node ``i`` is ``.(i + 2)``."""

    def __init__(self, n: int, tag: str | None = None) -> None:
        self.tag = tag or secrets.token_hex(2)
        self.subnet = _free_subnet()
        hosts = list(self.subnet.hosts())
        self.host = str(hosts[0])
        self.bridge = f"tcc{self.tag}br"
        self.nodes = [
            Node(f"tcc{self.tag}n{i}", str(hosts[i + 1]), f"tcc{self.tag}v{i}") for i in range(n)
        ]
        self._made: list[tuple[str, str]] = []

    def __enter__(self) -> Net:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        prefix = self.subnet.prefixlen
        _ip("link", "add", self.bridge, "type", "bridge")
        self._made.append(("link", self.bridge))
        _ip("addr", "add", f"{self.host}/{prefix}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, node in enumerate(self.nodes):
            outer = f"tcc{self.tag}h{i}"
            _ip("netns", "add", node.name)
            self._made.append(("netns", node.name))
            _ip("link", "add", outer, "type", "veth", "peer", "name", node.ifname)
            self._made.append(("link", outer))
            _ip("link", "set", node.ifname, "netns", node.name)
            _ip("link", "set", outer, "master", self.bridge)
            _ip("link", "set", outer, "up")
            _ip("addr", "add", f"{node.address}/{prefix}", "dev", node.ifname, ns=node.name)
            _ip("link", "set", node.ifname, "up", ns=node.name)
            _ip("link", "set", "lo", "up", ns=node.name)

    def close(self) -> None:
        for node in self.nodes:
            for proc in node.processes:
                stop(proc)
        for kind, name in reversed(self._made):
            with contextlib.suppress(subprocess.CalledProcessError):
                if kind == "netns":
                    _ip("netns", "del", name)
                else:
                    _ip("link", "del", name)
        self._made.clear()


def stop(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it lingers; waits for it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Origin(S3):
    """moto's S3 server on the bridge, in its own process, recording what it is asked."""

    process: subprocess.Popen[bytes] | None = None
    record: Path | None = None

    def gets(self, prefix: str) -> dict[str, int]:
        """Object GETs per key under ``bucket/prefix`` since :meth:`start_counting`."""
        counts: dict[str, int] = {}
        for req in self.requests("GET"):
            url = req.get("url", "").split("?")[0]
            marker = f"/{prefix}"
            if marker in url:
                key = url[url.index(marker) + 1 :]
                counts[key] = counts.get(key, 0) + 1
        return counts


@contextlib.contextmanager
def origin_on(host: str, workdir: Path, port: int = 0) -> Iterator[Origin]:
    """moto's server listening on ``host`` (the bridge's address), recording requests."""
    import socket

    if not port:
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
    record = workdir / f"moto-{secrets.token_hex(3)}.jsonl"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "MOTO_ENABLE_RECORDING": "True", "MOTO_RECORDER_FILEPATH": str(record)}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    endpoint = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise OSError(f"moto's server exited at start ({proc.returncode})")
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        import boto3

        yield Origin(endpoint, boto3.client("s3", endpoint_url=endpoint), proc, record)
    finally:
        stop(proc)


def toml_text(config: dict[str, Any]) -> str:
    """A config dict as TOML: top-level keys, ``[[tiers]]``, tables; inline tables and
    lists as values (enough for tiercache configs, for ``tiercache engine --config``)."""

    def value(v: Any) -> str:
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v)  # strings, numbers and booleans are spelled alike

    lines = [f"{k} = {value(v)}" for k, v in config.items()
             if k != "tiers" and not isinstance(v, dict)]  # fmt: skip
    for tier in config.get("tiers", []):
        lines += ["[[tiers]]", *(f"{k} = {value(v)}" for k, v in tier.items())]
    for name, table in config.items():
        if name != "tiers" and isinstance(table, dict):
            lines += [f"[{name}]", *(f"{k} = {value(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


def write_token(path: Path) -> str:
    token = secrets.token_hex(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def wait_for_line(proc: subprocess.Popen[Any], timeout: float) -> dict[str, Any]:
    """The first JSON line ``proc`` prints on stdout (its "ready" report)."""
    import selectors

    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buf = b""
    while time.monotonic() < deadline:
        if not sel.select(timeout=0.5):
            if proc.poll() is not None:
                break
            continue
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        buf += chunk
        if b"\n" in buf:
            return dict(json.loads(buf.split(b"\n", 1)[0]))
    raise TimeoutError(f"process {proc.args!r} printed no ready line (status {proc.poll()})")
