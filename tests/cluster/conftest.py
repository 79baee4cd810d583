"""Fixtures for cluster tests: three nodes in network namespaces, an S3 server on the bridge."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import netns
from tests.cluster.node import payload

PORT = 7480  # every node's peer server (each namespace has its own ports)


@dataclass
class Cluster:
    """A running test cluster: the network, the origin, a bucket with objects, configs."""

    net: netns.Net
    origin: netns.Origin
    bucket: str
    objects: list[tuple[str, int, int]]  # (name, seed, size)
    configs: list[dict[str, Any]]
    workdir: Path
    token: str

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(netns.ROOT), "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "OMP_NUM_THREADS": "1"}  # fmt: skip

    def start_engine(self, i: int, config: dict[str, Any] | None = None) -> tuple[Any, dict]:
        """``tiercache engine`` in node ``i``; returns it and its ready line."""
        path = self.workdir / f"engine-{i}-{uuid.uuid4().hex[:6]}.toml"
        path.write_text(netns.toml_text(config or self.configs[i]))
        proc = self.net.nodes[i].popen(
            [sys.executable, "-m", "tiercache", "engine", "--config", str(path), "--json",
             "--log-level", "warning"],
            env=self.env(), stdout=subprocess.PIPE,
        )  # fmt: skip
        ready = netns.wait_for_line(proc, 120)
        assert ready["event"] == "ready" and ready["cluster"]["port"] == PORT, ready
        return proc, ready

    def start_reader(self, i: int, order: list[str], epochs: int = 1, pause: float = 0.0,
                     config: dict[str, Any] | None = None) -> tuple[Any, Path]:  # fmt: skip
        out = self.workdir / f"read-{i}-{uuid.uuid4().hex[:6]}.json"
        args = {"config": config or self.configs[i], "options": self.origin.options,
                "bucket": self.bucket, "objects": self.objects, "order": order,
                "epochs": epochs, "pause": pause, "out": str(out)}  # fmt: skip
        proc = self.net.nodes[i].popen(
            [sys.executable, "-m", "tests.cluster.node", "read", json.dumps(args)],
            env=self.env(), stdout=subprocess.PIPE,
        )  # fmt: skip
        return proc, out

    def peers(self) -> list[str]:
        return [f"{n.address}:{PORT}" for n in self.net.nodes]


def node_config(workdir: Path, tag: str, i: int, cluster: dict[str, Any]) -> dict[str, Any]:
    """Node ``i``'s config: a RAM and an SSD tier of its own, and ``cluster`` as ``[cluster]``."""
    return {
        "tiers": [
            {"name": "ram", "path": f"/dev/shm/tcc{tag}-n{i}", "capacity": "1MiB",
             "verify": "on-change"},
            {"name": "ssd", "path": str(workdir / f"n{i}" / "ssd"), "capacity": "16MiB"},
        ],
        "index": {"path": str(workdir / f"n{i}" / "index")},
        "validation": {"mode": "ttl", "ttl_seconds": 600},
        "cluster": cluster,
    }  # fmt: skip


@pytest.fixture(scope="module")
def network() -> Iterator[tuple[netns.Net, netns.Origin, Path]]:
    why = netns.available()
    if why is not None:
        pytest.fail(f"cluster tests need network namespaces: {why}")
    workdir = Path(tempfile.mkdtemp(prefix="tcc-"))
    with netns.Net(3) as net, netns.origin_on(net.host, workdir) as origin:
        yield net, origin, workdir
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def cluster(network: tuple[netns.Net, netns.Origin, Path]) -> Iterator[Cluster]:
    """Three nodes with empty caches; 24 objects of 192 KiB (so that each node owns some
    in any run: with 12, node 2 owned none in one CI run) and one small one at the origin."""
    import boto3

    net, origin, base = network
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=base))
    tag = f"{net.tag}{uuid.uuid4().hex[:4]}"
    bucket = f"tcc-{uuid.uuid4().hex[:10]}"
    client = boto3.client("s3", endpoint_url=origin.endpoint)
    client.create_bucket(Bucket=bucket)
    objects = [(f"data/obj-{i:02d}", 1000 + i, 192 * 1024 + i) for i in range(24)]
    objects.append(("data/small", 999, 3000))
    for name, seed, size in objects:
        client.put_object(Bucket=bucket, Key=name, Body=payload(seed, size))
    token_file = workdir / "token"
    token = netns.write_token(token_file)
    peers = [f"{n.address}:{PORT}" for n in net.nodes]
    cluster = {"peers": peers, "token_file": str(token_file), "timeout_seconds": 3,
               "down_seconds": 1, "max_down_seconds": 4}  # fmt: skip
    configs = [node_config(workdir, tag, i, cluster) for i in range(len(net.nodes))]
    yield Cluster(net, origin, bucket, objects, configs, workdir, token)
    for node in net.nodes:
        for proc in node.processes:
            netns.stop(proc)
        node.processes.clear()
    for i in range(len(net.nodes)):
        for path in Path("/dev/shm").glob(f"tcc{tag}-n{i}*"):
            shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(workdir, ignore_errors=True)
