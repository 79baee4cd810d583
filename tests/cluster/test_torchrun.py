"""``discovery = "torch"``: torchrun across two namespaces, the engines learn each other."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.cluster import netns
from tests.cluster.conftest import node_config
from tests.torch import helpers

ROOT = netns.ROOT


def test_torchrun_two_nodes_find_each_other_through_the_rendezvous_store() -> None:
    from tiercache.torch import write_tokens

    why = netns.available()
    if why is not None:
        pytest.fail(f"needs network namespaces: {why}")
    work = Path(tempfile.mkdtemp(prefix="tcc-torchrun-"))
    tag = uuid.uuid4().hex[:6]
    try:
        with netns.Net(2) as net, netns.origin_on(net.host, work) as origin:
            import boto3

            bucket = f"tcc-{uuid.uuid4().hex[:10]}"
            boto3.client("s3", endpoint_url=origin.endpoint).create_bucket(Bucket=bucket)
            shards = 16
            toks = helpers.tokens(shards)
            url = f"s3://{bucket}/tokens"
            write_tokens(toks, url, shard_bytes=helpers.SHARD_TOKENS * 2,
                         storage_options=origin.options)  # fmt: skip
            origin.start_counting()
            procs = []
            for i, node in enumerate(net.nodes):
                torch_cluster = {"discovery": "torch", "listen": "0.0.0.0:7480",
                                 "discovery_timeout_seconds": 120}  # fmt: skip
                config = node_config(work, tag, i, torch_cluster)
                config["tiers"][0]["capacity"] = "256KiB"
                config["tiers"][1]["capacity"] = "4MiB"
                out = work / f"out{i}"
                out.mkdir()
                args = {"url": url, "options": origin.options, "config": config,
                        "seq": helpers.SEQ, "out": str(out), "window": 2,
                        "workers": 1}  # fmt: skip
                env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                       "GLOO_SOCKET_IFNAME": node.ifname, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing"}  # fmt: skip
                command = [
                    sys.executable, "-m", "torch.distributed.run", "--nnodes=2",
                    "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-id=tcc{tag}",
                    f"--rdzv-endpoint={net.nodes[0].address}:29400",
                    f"--local-addr={node.address}", "--max-restarts=0",
                    # torchrun looks for the endpoint among the host name's addresses, which a
                    # namespace's are not: say which node hosts the store.
                    f"--rdzv-conf=is_host={'true' if i == 0 else 'false'}",
                    str(ROOT / "tests" / "torch" / "ddp_train.py"), json.dumps(args),
                ]  # fmt: skip
                procs.append(node.popen(command, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT))  # fmt: skip
            logs = []
            for proc in procs:
                out_text, _ = proc.communicate(timeout=240)
                logs.append(out_text.decode(errors="replace"))
            for proc, log in zip(procs, logs, strict=True):
                assert proc.returncode == 0, log[-4000:]
            gets = origin.gets("tokens/")
        ranks = [json.loads((work / f"out{i}" / f"rank{i}.json").read_text()) for i in range(2)]
        ranks.sort(key=lambda r: r["rank"])
        assert [(r["nodes"], r["node"]) for r in ranks] == [(2, 0), (2, 1)]
        per_shard = helpers.SHARD_TOKENS // helpers.SEQ
        everything = {int(helpers.expected_sample(toks, i)[0]) for i in range(shards * per_shard)}
        for epoch in range(2):
            firsts = [set(r["first_tokens"][epoch]) for r in ranks]
            assert not firsts[0] & firsts[1]  # the nodes read disjoint samples...
            assert firsts[0] | firsts[1] == everything  # ...and all of them
        # Two nodes, two epochs, and each shard left S3 once: the nodes read each other's.
        stats = [r["stats"] for r in ranks]
        assert len(gets) == shards and set(gets.values()) == {1}, (gets, stats, logs)
        for r in ranks:
            cluster = r["stats"]["cluster"]
            assert cluster["peers"] == 1 and cluster["peers_up"] == 1
        assert sum(r["stats"]["cluster"]["peer_hits"] for r in ranks) > 0
    finally:
        for path in Path("/dev/shm").glob(f"tcc{tag}-*"):
            shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
