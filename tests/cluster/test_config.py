"""``[cluster]``: every mistake is named, with the key and what would be right."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tiercache.cluster.settings import find_self
from tiercache.config import ConfigError, load_config


def config(tmp_path: Path, **cluster: Any) -> dict[str, Any]:
    return {
        "tiers": [{"name": "ram", "path": str(tmp_path / "ram"), "capacity": "1MiB"}],
        "cluster": cluster,
    }


@pytest.fixture
def token(tmp_path: Path) -> str:
    path = tmp_path / "token"
    path.write_text("s3cr3t-" * 4 + "\n")
    os.chmod(path, 0o600)
    return str(path)


def test_a_static_cluster_loads(tmp_path: Path, token: str) -> None:
    c = load_config(config(tmp_path, peers=["10.0.0.1:7480", "10.0.0.2:7480"],
                           self="10.0.0.2:7480", token_file=token)).cluster  # fmt: skip
    assert c is not None
    assert [p.address for p in c.peers] == ["10.0.0.1:7480", "10.0.0.2:7480"]
    assert c.discovery == "static" and find_self(c) == "10.0.0.2:7480"


def test_weights_come_from_capacities(tmp_path: Path, token: str) -> None:
    c = load_config(config(tmp_path, token_file=token, self="a:1", peers=[
        {"address": "a:1", "capacity": "1GiB"}, {"address": "b:1", "capacity": "3GiB"}
    ])).cluster  # fmt: skip
    assert c is not None and [p.capacity for p in c.peers] == [1024**3, 3 * 1024**3]


@pytest.mark.parametrize(
    ("cluster", "message"),
    [
        ({"peers": []}, "cluster.peers"),
        ({"peers": ["nohostport"]}, "cluster.peers"),
        ({"peers": ["a:99999"]}, "host:port"),
        ({"peers": ["a:1", "a:1"]}, "each address once"),
        ({"peers": ["a:1"], "self": "b:1"}, "cluster.self"),
        ({"peers": ["a:1", {"address": "b:1", "capacity": "1GiB"}]}, "for every peer"),
        ({"peers": ["a:1"], "discovery": "etcd"}, "cluster.discovery"),
        ({"peers": ["a:1"], "timeout_seconds": 0}, "cluster.timeout_seconds"),
        ({"peers": ["a:1"], "peer": "typo"}, "unknown key cluster.peer"),
    ],
)
def test_mistakes_are_named(tmp_path: Path, token: str, cluster: dict[str, Any],
                            message: str) -> None:  # fmt: skip
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(config(tmp_path, **{"token_file": token, **cluster}))


def test_a_static_cluster_needs_a_private_token(tmp_path: Path, token: str) -> None:
    with pytest.raises(ConfigError, match="token_file"):
        load_config(config(tmp_path, peers=["a:1"]))
    os.chmod(token, 0o644)
    with pytest.raises(ConfigError, match="readable by other users"):
        load_config(config(tmp_path, peers=["a:1"], token_file=token))
    short = tmp_path / "short"
    short.write_text("abc")
    os.chmod(short, 0o600)
    with pytest.raises(ConfigError, match="at least 16"):
        load_config(config(tmp_path, peers=["a:1"], token_file=str(short)))
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(config(tmp_path, peers=["a:1"], token_file=str(tmp_path / "none")))


def test_torch_discovery_needs_no_list_or_token(tmp_path: Path) -> None:
    c = load_config(config(tmp_path, discovery="torch", listen="0.0.0.0:7480")).cluster
    assert c is not None and c.peers == () and c.token_file is None


def test_self_is_found_among_this_hosts_addresses(tmp_path: Path, token: str) -> None:
    c = load_config(config(tmp_path, peers=["203.0.113.1:7480", "127.0.0.1:7480"],
                           token_file=token)).cluster  # fmt: skip
    assert c is not None and find_self(c) == "127.0.0.1:7480"
    c = load_config(config(tmp_path, peers=["203.0.113.1:7480", "203.0.113.2:7480"],
                           token_file=token)).cluster  # fmt: skip
    assert c is not None
    with pytest.raises(ValueError, match="cluster.self"):
        find_self(c)
    c = load_config(config(tmp_path, peers=["127.0.0.1:1", "127.0.0.1:2"],
                           token_file=token)).cluster  # fmt: skip
    assert c is not None
    with pytest.raises(ValueError, match="several"):
        find_self(c)
