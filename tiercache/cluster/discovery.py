"""Membership from torchrun's rendezvous store: no service to deploy, no list to keep.

Under ``torchrun`` every node's agent already rendezvoused, and the store the agents share
(a TCPStore at ``MASTER_ADDR:MASTER_PORT``; ``TORCHELASTIC_USE_AGENT_STORE``) is reachable
from every rank. With ``[cluster] discovery = "torch"``, each node's local rank 0, when it
first opens the cache, asks its engine for the port it serves peers on and its token,
publishes ``address, token, capacity`` under this run's key, waits for every node's entry
and hands the list to its engine. The engines then agree on the same ring. DataLoader
workers and the other local ranks do nothing: the engine is the node's, not the rank's.

A node's address is the one its packets to the store's host leave from (the route a peer
on the same network would use back), unless ``[cluster] self`` names it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .settings import split_address

if TYPE_CHECKING:
    from ..cache import Cache

log = logging.getLogger("tiercache.cluster.discovery")

#: Set in a process whose node has joined this run: its DataLoader workers inherit it and
#: never join again.
JOINED_ENV = "TIERCACHE_CLUSTER_JOINED"


def torchrun_layout(env: dict[str, str] | None = None) -> dict[str, Any] | None:
    """This process's place under torchrun (None when not launched by it)."""
    env = dict(os.environ if env is None else env)
    if "GROUP_RANK" not in env or "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
        return None
    local_world = int(env.get("LOCAL_WORLD_SIZE", "1"))
    nodes = env.get("GROUP_WORLD_SIZE") or str(int(env.get("WORLD_SIZE", "1")) // local_world)
    run = f"{env.get('TORCHELASTIC_RUN_ID', 'none')}/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    return {
        "nodes": int(nodes),
        "node": int(env["GROUP_RANK"]),
        "local_rank": int(env.get("LOCAL_RANK", "0")),
        "master": (env["MASTER_ADDR"], int(env["MASTER_PORT"])),
        "run": run,
    }


def join_under_torchrun(cache: Cache) -> None:
    """Publish this node's engine and learn the others', if this is local rank 0 of a
    torchrun job that has not joined yet. Never raises: a node that cannot join reads alone
    (from the origin), and says why."""
    layout = torchrun_layout()
    if layout is None or layout["local_rank"] != 0:
        return
    if os.environ.get(JOINED_ENV) == layout["run"]:
        return
    try:
        join(cache, layout)
    except Exception as exc:
        log.warning("could not join the cluster through torchrun's store (%s: %s); this "
                    "node reads from the origin alone", type(exc).__name__, exc)  # fmt: skip
        return
    os.environ[JOINED_ENV] = layout["run"]


def join(cache: Cache, layout: dict[str, Any]) -> list[dict[str, Any]]:
    """The exchange itself; returns the member list handed to the engine."""
    from torch.distributed import TCPStore

    config = cache.config.cluster
    assert config is not None
    info, _ = cache.engine_call("cluster_info")
    if info.get("run") == layout["run"] and info.get("self"):
        return []  # this engine already joined this run (a restarted rank)
    if config.self_address:
        host = split_address(config.self_address, "cluster.self")[0]
    else:
        host = route_address(*layout["master"])
    address = f"[{host}]:{info['port']}" if ":" in host else f"{host}:{info['port']}"
    timeout = timedelta(seconds=config.discovery_timeout_seconds)
    master_host, master_port = layout["master"]
    store = TCPStore(master_host, master_port, is_master=False, timeout=timeout)
    prefix = f"tiercache/cluster/{layout['run']}/node/"
    mine = {"address": address, "token": info["token"], "weight": float(info["capacity"])}
    store.set(f"{prefix}{layout['node']}", json.dumps(mine))
    keys = [f"{prefix}{i}" for i in range(layout["nodes"])]
    store.wait(keys, timeout)
    members = [json.loads(store.get(k)) for k in keys]
    cache.engine_call("cluster_join", members=members, me=address, run=layout["run"])
    log.info("joined a cluster of %d node(s) as %s", len(members), address)
    return members


def route_address(host: str, port: int) -> str:
    """The local address packets to ``host:port`` leave from (no packet is sent)."""
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect(sockaddr)
        return str(s.getsockname()[0])
