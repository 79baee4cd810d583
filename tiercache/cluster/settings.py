"""The ``[cluster]`` table: which engines pool their tiers, and how they find each other.

Parsed here rather than in ``config.py`` so that everything about peers lives in one package;
``config.py`` calls :func:`parse_cluster` for the table and keeps the result on ``Config``.
Every mistake is reported with the key, the bad value and what is allowed, like the rest of
the config.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import _Reader

DISCOVERY_MODES = ("static", "torch")


@dataclass(frozen=True)
class PeerSpec:
    """One engine of the cluster as the config names it: ``host:port`` and its weight."""

    address: str
    #: Bytes this node caches, the weight of its share of keys; None: equal shares.
    capacity: int | None = None


@dataclass(frozen=True)
class ClusterConfig:
    """How this node's engine joins the others (see docs/configuration.md, ``[cluster]``)."""

    peers: tuple[PeerSpec, ...] = ()
    #: This node's entry in ``peers`` (None: the one whose address is one of this host's).
    self_address: str | None = None
    #: File holding the shared secret every peer request carries (Authorization: Bearer).
    token_file: Path | None = None
    #: Where the peer server listens, ``host:port``; "" means all addresses, self's port.
    listen: str = ""
    #: "static": ``peers`` is the list; "torch": learned from torchrun's rendezvous store.
    discovery: str = "static"
    #: A peer that does not answer (connect, or between two reads) within this is down.
    timeout_seconds: float = 10.0
    #: First back-off of a peer marked down; doubles on each further failure.
    down_seconds: float = 2.0
    #: Longest back-off.
    max_down_seconds: float = 60.0
    #: Kept-alive connections per peer.
    connections: int = 4
    #: Owners after the first tried (in rendezvous order) when one is down, before the origin.
    next_owners: int = 1
    #: Keep copies of other nodes' keys in the admission tier (always dropped first).
    replicas: bool = True
    #: How long ranks wait for every node to publish its engine (``discovery = "torch"``).
    discovery_timeout_seconds: float = 300.0


def split_address(text: str, key: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) -> (host, port); ValueError naming ``key``."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{key} = {text!r} is invalid; expected 'host:port'")
    return host.strip("[]"), int(port)


def parse_cluster(r: _Reader) -> ClusterConfig:
    """The ``[cluster]`` table (``r`` reads it, with the config's error conventions)."""
    from ..config import _integer, _number, _size

    discovery = r.pop("discovery", str, default="static")
    if discovery not in DISCOVERY_MODES:
        raise r.error("discovery", discovery, f"one of {', '.join(DISCOVERY_MODES)}")
    raw_peers = r.pop("peers", list, default=[])
    peers: list[PeerSpec] = []
    for i, raw in enumerate(raw_peers):
        key = f"peers[{i}]"
        if isinstance(raw, str):
            address, capacity = raw, None
        elif isinstance(raw, dict):
            extra = set(raw) - {"address", "capacity"}
            if extra or "address" not in raw:
                raise r.error(key, raw, "'host:port' or {address = 'host:port', capacity = ...}")
            address = raw["address"]
            capacity = _size(r, f"{key}.capacity", raw["capacity"]) if "capacity" in raw else None
        else:
            raise r.error(key, raw, "'host:port' or {address = 'host:port', capacity = ...}")
        _check_address(r, key, address)
        peers.append(PeerSpec(address, capacity))
    addresses = [p.address for p in peers]
    for address in addresses:
        if addresses.count(address) > 1:
            raise r.error("peers", address, "each address once")
    weighted = [p.capacity is not None for p in peers]
    if any(weighted) and not all(weighted):
        raise r.error("peers", raw_peers, "a capacity for every peer, or for none")
    if discovery == "static" and not peers:
        raise r.error("peers", raw_peers, 'at least one "host:port" (or discovery = "torch")')
    self_address = r.pop("self", str, default="") or None
    if self_address is not None:
        _check_address(r, "self", self_address)
        if peers and self_address not in addresses:
            raise r.error("self", self_address, f"one of peers: {', '.join(addresses)}")
    token_text = r.pop("token_file", str, default="")
    token_file = Path(os.path.expandvars(token_text)).expanduser() if token_text else None
    if discovery == "static" and token_file is None:
        raise r.error(
            "token_file", token_text, "a file holding the secret every node shares (required)"
        )
    if token_file is not None:
        read_token(token_file, key=f"{r.origin}: {r.prefix}token_file")
    listen = r.pop("listen", str, default="")
    if listen:
        _check_address(r, "listen", listen)
    timeout = _number(r, "timeout_seconds", 10.0, minimum=0.05)
    down = _number(r, "down_seconds", 2.0, minimum=0.0)
    max_down = _number(r, "max_down_seconds", 60.0, minimum=down)
    connections = _integer(r, "connections", 4, minimum=1)
    next_owners = _integer(r, "next_owners", 1, minimum=0)
    replicas = r.pop("replicas", bool, default=True)
    wait = _number(r, "discovery_timeout_seconds", 300.0, minimum=1.0)
    return ClusterConfig(
        tuple(peers), self_address, token_file, listen, discovery, timeout, down, max_down,
        connections, next_owners, replicas, wait,
    )  # fmt: skip


def _check_address(r: _Reader, key: str, address: Any) -> None:
    if not isinstance(address, str):
        raise r.error(key, address, "a string 'host:port'")
    try:
        split_address(address, key)
    except ValueError:
        raise r.error(key, address, "'host:port' (an IPv6 host in brackets)") from None


def read_token(path: Path, *, key: str = "token_file") -> str:
    """The shared secret in ``path``: its first line, stripped; errors name the key and file.

    A token file others can read is refused: anyone holding it can read the cluster's cache.
    """
    try:
        st = path.stat()
        text = path.read_text().strip()
    except OSError as exc:
        raise _config_error(f"{key} {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    if st.st_mode & 0o077:
        raise _config_error(
            f"{key} {str(path)!r} is readable by other users (mode {st.st_mode & 0o777:o}); "
            "chmod 600 it"
        )
    token = text.splitlines()[0].strip() if text else ""
    if len(token) < 16:
        raise _config_error(f"{key} {str(path)!r} must hold a secret of at least 16 characters")
    return token


def _config_error(message: str) -> Exception:
    from ..config import ConfigError

    return ConfigError(message)


def local_addresses(host: str) -> list[str]:
    """Addresses ``host`` resolves to that belong to this machine (or network namespace).

    A socket can bind only to one of its own addresses, which is the simplest portable test.
    """
    found = []
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return []
    for family, _, _, _, sockaddr in infos:
        ip = str(sockaddr[0])
        if ipaddress.ip_address(ip).is_unspecified:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((ip, 0))
            except OSError:
                continue
        found.append(ip)
    return found


def find_self(config: ClusterConfig) -> str:
    """This node's entry in ``peers``: ``self`` if set, else the one entry whose host is one of
    this machine's addresses. Raises ValueError naming the candidates when that is not one."""
    if config.self_address is not None:
        return config.self_address
    mine = [p.address for p in config.peers if local_addresses(split_address(p.address, "")[0])]
    if len(mine) == 1:
        return mine[0]
    listed = ", ".join(p.address for p in config.peers)
    if not mine:
        raise ValueError(
            f"[cluster] none of peers ({listed}) is an address of this host; set "
            "cluster.self to this node's entry"
        )
    raise ValueError(
        f"[cluster] several peers are addresses of this host ({', '.join(mine)}); set "
        "cluster.self to this node's entry"
    )
