"""Placement: capacity held, demotion on eviction, promotion on hits, lz4, free space."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import S3, make_config, put_objects
from tiercache import TierCacheFileSystem

MiB = 1 << 20


def fs_for(dirs: dict[str, Path], s3: S3, **kw: Any) -> Any:
    return TierCacheFileSystem(
        config=make_config(dirs, **kw), target_protocol="s3", target_options=s3.options
    )


def blobs_on_disk(root: Path) -> int:
    return sum(p.stat().st_size for p in (root / "blobs").rglob("*") if p.is_file())


def test_capacity_is_held_and_evictions_demote(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str
) -> None:
    objs = {f"o{i}": os.urandom(MiB) for i in range(12)}
    put_objects(s3_server, bucket, objs)
    fs = fs_for(cache_dirs, s3_server, ram=3 * MiB, ssd=5 * MiB)
    for key, body in objs.items():
        assert fs.cat_file(f"{bucket}/{key}") == body
    fs.cache.engine.wait_idle()  # demotions are copied in the background
    stats = fs.stats()
    ram, ssd = stats["tiers"]["ram"], stats["tiers"]["ssd"]
    assert ram["used_bytes"] <= 3 * MiB and ram["entries"] == 3
    assert ssd["used_bytes"] <= 5 * MiB and ssd["entries"] == 5
    assert ram["demotions"] == 9  # every eviction from RAM moved down, none dropped
    assert ssd["evictions"] == 4  # the SSD tier drops its oldest
    # What the index says is what is on disk.
    assert blobs_on_disk(cache_dirs["ram"]) == ram["used_bytes"]
    assert blobs_on_disk(cache_dirs["ssd"] / "ssd") == ssd["used_bytes"]
    # LRU in both: the newest 3 in RAM, the 5 before them on SSD.
    index = fs.cache.index
    tiers = [index.get(f"s3://{bucket}/o{i}") for i in range(12)]
    assert [e.tier if e else None for e in tiers] == [None] * 4 + [1] * 5 + [0] * 3
    fs.cache.engine.check()


def test_promotion_after_configured_hits(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str
) -> None:
    objs = {f"p{i}": os.urandom(MiB) for i in range(4)}
    put_objects(s3_server, bucket, objs)
    fs = fs_for(cache_dirs, s3_server, ram=2 * MiB, ssd=8 * MiB, promotion={"hits": 2})
    for key in objs:
        fs.cat_file(f"{bucket}/{key}")
    fs.cache.engine.wait_idle()
    key = f"s3://{bucket}/p0"
    assert fs.cache.index.get(key).tier == 1
    assert fs.cat_file(f"{bucket}/p0") == objs["p0"]  # hit 1 in SSD: stays
    fs.cache.engine._housekeeping_once()
    assert fs.cache.index.get(key).tier == 1
    assert fs.cat_file(f"{bucket}/p0") == objs["p0"]  # hit 2: promoted
    fs.cache.engine._housekeeping_once()
    assert fs.cache.index.get(key).tier == 0
    stats = fs.stats()
    assert stats["tiers"]["ssd"]["promotions"] == 1
    assert stats["tiers"]["ssd"]["hits"] == 2
    assert stats["tiers"]["ram"]["used_bytes"] <= 2 * MiB
    assert fs.cat_file(f"{bucket}/p0") == objs["p0"]
    assert fs.stats()["tiers"]["ram"]["hits"] == 1
    fs.cache.engine.check()


def test_lz4_tier_round_trip(cache_dirs: dict[str, Path], s3_server: S3, bucket: str) -> None:
    rng = __import__("random").Random(1)
    vocab = [rng.randrange(50_000).to_bytes(4, "little") for _ in range(64)]
    tokens = b"".join(rng.choices(vocab, k=300_000))  # token ids: compressible
    noise = os.urandom(len(tokens))  # incompressible: stored raw
    put_objects(s3_server, bucket, {"tokens.bin": tokens, "noise.bin": noise})
    fs = fs_for(
        cache_dirs, s3_server, ram=2 * MiB, ssd=8 * MiB, tier_extra={"ssd": {"compression": "lz4"}}
    )
    fs.cat_file(f"{bucket}/tokens.bin")
    fs.cat_file(f"{bucket}/noise.bin")  # pushes tokens.bin out of RAM into the lz4 tier
    fs.cache.engine.wait_idle()
    entry = fs.cache.index.get(f"s3://{bucket}/tokens.bin")
    assert entry.tier == 1 and entry.blob.compressed
    assert entry.blob.stored_size < len(tokens) / 1.3
    assert fs.cat_file(f"{bucket}/tokens.bin") == tokens
    assert fs.cat_file(f"{bucket}/tokens.bin", 1000, 1016) == tokens[1000:1016]
    with fs.open(f"{bucket}/tokens.bin") as f:
        f.seek(123_456)
        assert f.read(10) == tokens[123_456:123_466]


def test_small_objects_live_in_the_index_store(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str
) -> None:
    objs = {f"tiny/{i}": os.urandom(4096) for i in range(50)}
    put_objects(s3_server, bucket, objs)
    fs = fs_for(cache_dirs, s3_server)
    fs.cat(f"{bucket}/tiny/*")
    assert blobs_on_disk(cache_dirs["ram"]) == 0  # no file per object
    for key, body in objs.items():
        assert fs.cat_file(f"{bucket}/{key}") == body
    assert fs.stats()["tiers"]["ram"]["entries"] == 50


def test_object_larger_than_every_tier_is_served_not_stored(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str
) -> None:
    big = os.urandom(3 * MiB)
    put_objects(s3_server, bucket, {"big": big})
    fs = fs_for(cache_dirs, s3_server, ram=MiB, ssd=2 * MiB)
    assert fs.cat_file(f"{bucket}/big") == big
    with fs.open(f"{bucket}/big") as f:
        f.seek(MiB)
        assert f.read(100) == big[MiB : MiB + 100]
    stats = fs.stats()
    assert stats["tiers"]["ram"]["entries"] == 0 and stats["tiers"]["ssd"]["entries"] == 0
    assert stats["not_admitted"] == 2  # both reads went to the origin; no tier could take it


def test_full_disk_is_skipped_not_raised(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str
) -> None:
    body = os.urandom(MiB)
    put_objects(s3_server, bucket, {"x": body})
    # A min_free larger than the filesystem: the SSD tier can never take anything.
    fs = fs_for(
        cache_dirs, s3_server, ram=MiB // 2, ssd=8 * MiB, tier_extra={"ssd": {"min_free": "100%"}}
    )
    assert fs.cat_file(f"{bucket}/x") == body
    assert fs.stats()["tiers"]["ssd"]["bypass_full"] >= 1
    assert fs.stats()["tiers"]["ssd"]["entries"] == 0


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"capacity": "lots"}, "tiers[0].capacity = 'lots' is not a size"),
        ({"eviction": "nope"}, "unknown eviction 'nope'; valid: "),
        ({"compression": "zstd"}, "tiers[0].compression = 'zstd' is invalid; one of none, lz4"),
        ({"colour": "red"}, "unknown key tiers[0].colour"),
    ],
)
def test_invalid_config_names_key_value_and_allowed(
    cache_dirs: dict[str, Path], bad: dict, message: str
) -> None:
    from tiercache import ConfigError, load_config

    config = make_config(cache_dirs)
    config["tiers"][0].update(bad)
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert message in str(info.value)


def test_config_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tiercache import ConfigError, load_config

    toml = tmp_path / "my.toml"
    toml.write_text(
        f'[[tiers]]\nname = "ram"\npath = "{tmp_path}/r"\ncapacity = "10%"\n'
        '[validation]\nmode = "often"\n'
    )
    with pytest.raises(ConfigError, match=r"my.toml: validation.mode = 'often' is invalid"):
        load_config(str(toml))
    toml.write_text(f'[[tiers]]\nname = "ram"\npath = "{tmp_path}/r"\ncapacity = "10%"\n')
    config = load_config(str(toml))
    st = os.statvfs(tmp_path)
    assert config.tiers[0].capacity == int(st.f_blocks * st.f_frsize * 0.10)
    monkeypatch.setenv("TIERCACHE_CONFIG", str(toml))
    assert load_config(None).tiers[0].path == tmp_path / "r"
    assert load_config("default").tiers[0].name == "ram"
    with pytest.raises(ConfigError, match="unknown policy preset 'nosuch'; presets: .*default"):
        load_config("nosuch")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.toml"))


def test_access_log_replays_in_simulate(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, tmp_path: Path
) -> None:
    """``trace = "path"`` records every request; ``simulate`` reads it back."""
    from tiercache.simulate import read_trace, simulate

    objs = {f"tr/{i}": os.urandom(1000 + i) for i in range(5)}
    put_objects(s3_server, bucket, objs)
    log = tmp_path / "access.log"
    fs = fs_for(cache_dirs, s3_server, trace=str(log))
    order = ["tr/0", "tr/1", "tr/0", "tr/2", "tr/0", "tr/1"]
    for key in order:
        fs.cat_file(f"{bucket}/{key}")
    lines = [__import__("json").loads(line) for line in log.read_text().splitlines()]
    assert [x["key"] for x in lines] == [f"s3://{bucket}/{k}" for k in order]
    assert [x["hit"] for x in lines] == [False, False, True, False, True, True]
    assert [x["tier"] for x in lines] == [None, None, "ram", None, "ram", "ram"]
    trace = read_trace(log)
    (result,) = simulate(trace, ["lru"], [10**6])
    assert result["requests"] == 6 and result["hit_ratio"] == 0.5


def test_object_no_tier_takes_is_read_from_origin_once_for_its_readers(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str
) -> None:
    """Full ``static`` tiers admit nothing more; the next readers of such an object (other
    DataLoader workers, the reader after a prefetch) still get it without a second GET."""
    objs = {f"st/{i}": os.urandom(MiB) for i in range(6)}
    put_objects(s3_server, bucket, objs)
    fs = fs_for(
        cache_dirs,
        s3_server,
        ram=2 * MiB,
        ssd=2 * MiB,
        tier_extra={"ram": {"eviction": "static"}, "ssd": {"eviction": "static"}},
    )
    for i in range(4):  # fill both tiers for good
        fs.cat_file(f"{bucket}/st/{i}")
    s3_server.start_counting()
    for _ in range(3):
        assert fs.cat_file(f"{bucket}/st/4") == objs["st/4"]
    assert len(s3_server.requests("GET", "st/4")) == 1
    assert fs.stats()["not_admitted"] == 3  # asked each time; the tiers stay as they were
    assert fs.cache.index.get(f"s3://{bucket}/st/4") is None


def test_promotion_can_be_switched_off(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str
) -> None:
    objs = {f"np/{i}": os.urandom(MiB) for i in range(4)}
    put_objects(s3_server, bucket, objs)
    fs = fs_for(cache_dirs, s3_server, ram=2 * MiB, ssd=8 * MiB, promotion={"hits": 0})
    for key in objs:
        fs.cat_file(f"{bucket}/{key}")
    for _ in range(5):
        assert fs.cat_file(f"{bucket}/np/0") == objs["np/0"]
        fs.cache.engine._housekeeping_once()
    assert fs.cache.index.get(f"s3://{bucket}/np/0").tier == 1
    assert fs.stats()["tiers"]["ssd"]["promotions"] == 0


def test_an_object_larger_than_the_mapping_budget_is_read(
    cache_dirs: dict[str, Path], s3_server: S3, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process keeps at most ``_MAP_BYTES`` of blob mappings; one blob larger than that
    (a checkpoint of several GiB) must still be mapped and read, not dropped before its
    view is handed out."""
    from tiercache.tiers import store

    monkeypatch.setattr(store, "_MAP_BYTES", MiB)
    objs = {"big": os.urandom(3 * MiB), "other": os.urandom(2 * MiB)}
    put_objects(s3_server, bucket, objs)
    fs = fs_for(cache_dirs, s3_server, ram=8 * MiB, ssd=16 * MiB)
    for _ in range(2):  # a miss, then hits from the RAM tier's shared mapping
        for key, body in objs.items():
            with fs.open(f"{bucket}/{key}") as f:
                assert f.read() == body
