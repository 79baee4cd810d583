"""The command line a user runs: warm, verify, clear, with --json for scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import S3, make_config, put_objects

MiB = 1 << 20


def tiercache(
    *args: str, config: Path | None = None, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "tiercache", *args]
    if config is not None:
        argv += ["--config", str(config)]
    proc = subprocess.run(
        argv, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def config_file(cache_dirs: dict[str, Path], tmp_path: Path) -> Path:
    import tomllib  # noqa: F401  (the file must be valid TOML for the CLI)

    cfg = make_config(cache_dirs, ram=3 * MiB)
    lines = []
    for tier in cfg["tiers"]:
        lines.append("[[tiers]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in tier.items()]
    lines += ["[validation]", 'mode = "ttl"', "ttl_seconds = 60"]
    path = tmp_path / "cache.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_warm_then_stats_then_verify_then_clear(
    config_file: Path, s3_server: S3, bucket: str, cache_dirs: dict[str, Path]
) -> None:
    objs = {f"train/{i}.bin": os.urandom(MiB) for i in range(5)} | {"other/x": b"x"}
    put_objects(s3_server, bucket, objs)
    env = {"AWS_ENDPOINT_URL": s3_server.endpoint}
    s3_server.start_counting()
    out = tiercache("warm", f"s3://{bucket}/train/", "--json", config=config_file, env=env)
    summary = json.loads(out.stdout)
    assert summary["objects"] == 5 and summary["bytes"] == 5 * MiB and not summary["errors"]
    assert len(s3_server.requests("GET")) >= 5
    # warm again: everything is cached, nothing more is read from the origin
    before = len([r for r in s3_server.requests("GET") if "/train/" in r["url"]])
    tiercache("warm", f"s3://{bucket}/train/*.bin", "--json", config=config_file, env=env)
    after = len([r for r in s3_server.requests("GET") if "/train/" in r["url"]])
    assert after == before

    report = json.loads(tiercache("verify", "--json", config=config_file).stdout)
    assert report["ok"] and report["entries"] == 5
    assert report["tiers"]["ram"]["entries"] == 3 and report["tiers"]["ssd"]["entries"] == 2

    cleared = json.loads(tiercache("clear", "--tier", "ram", "--json", config=config_file).stdout)
    assert cleared == {"entries": 3, "bytes": 3 * MiB}
    report = json.loads(tiercache("verify", "--json", config=config_file).stdout)
    assert report["ok"] and report["tiers"]["ram"]["entries"] == 0
    tiercache("clear", config=config_file)
    assert json.loads(tiercache("verify", "--json", config=config_file).stdout)["entries"] == 0


def test_verify_reports_and_repairs_damage(
    config_file: Path, s3_server: S3, bucket: str, cache_dirs: dict[str, Path]
) -> None:
    put_objects(s3_server, bucket, {"d.bin": os.urandom(MiB)})
    env = {"AWS_ENDPOINT_URL": s3_server.endpoint}
    tiercache("warm", f"s3://{bucket}/d.bin", config=config_file, env=env)
    blob = next(p for p in (cache_dirs["ram"] / "blobs").rglob("*") if p.is_file())
    with open(blob, "r+b") as f:
        f.write(b"\0\0\0\0")
    (cache_dirs["ram"] / "blobs" / "ff").mkdir(exist_ok=True)
    (cache_dirs["ram"] / "blobs" / "ff" / ("f" * 32)).write_bytes(b"orphan")
    bad = tiercache("verify", config=config_file, check=False)
    assert bad.returncode == 1
    assert "checksum mismatch" in bad.stdout
    # This verify's process became the engine, which sweeps orphans at start and says so.
    assert "fixed when the engine started: 1 orphan blobs" in bad.stdout
    fixed = tiercache("verify", "--repair", "--json", config=config_file)
    assert json.loads(fixed.stdout)["repaired"]
    clean = json.loads(tiercache("verify", "--json", config=config_file).stdout)
    assert clean["ok"] and clean["entries"] == 0


def test_bad_input_is_one_clear_line(tmp_path: Path, config_file: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[tiers]]\nname = "ram"\npath = "/tmp/x"\ncapacity = "huge"\n')
    proc = tiercache("verify", config=bad, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"tiercache: error: {bad}: tiers[0].capacity = 'huge' is not a size; use an integer "
        'number of bytes, "512MiB", "2GiB", "1.5GB" or "10%"'
    )
    proc = tiercache("clear", "--tier", "gpu", config=config_file, check=False)
    assert "no tier named 'gpu'; tiers: ram, ssd" in proc.stderr
    proc = tiercache("warm", "file:///definitely/not/here", config=config_file, check=False)
    assert proc.returncode == 1 and "nothing at file:///definitely/not/here" in proc.stderr


def test_protocol_is_registered_by_the_installed_package() -> None:
    from importlib.metadata import entry_points

    import fsspec

    names = {ep.name: ep.value for ep in entry_points(group="fsspec.specs")}
    assert names["tiercache"] == "tiercache.fs:TierCacheFileSystem"
    assert fsspec.get_filesystem_class("tiercache").__name__ == "TierCacheFileSystem"


def test_local_directory_origin(cache_dirs: dict[str, Path], tmp_path: Path) -> None:
    """An HDD or network directory is just another fsspec origin."""
    import fsspec

    origin = tmp_path / "hdd"
    origin.mkdir()
    (origin / "a.bin").write_bytes(b"A" * 100_000)
    url = f"tiercache::file://{origin}/a.bin"
    with fsspec.open(url, tiercache={"config": make_config(cache_dirs)}) as f:
        assert f.read() == b"A" * 100_000
    fs: Any = fsspec.filesystem("tiercache", target_protocol="file", config=make_config(cache_dirs))
    assert fs.cat_file(str(origin / "a.bin"), 10, 20) == b"A" * 10
    assert fs.stats()["tiers"]["ram"]["hits"] == 1
