"""Bad input names the place that is wrong: config files and values, traces, shard
indexes. Fuzzed with hypothesis: any config dict is a clean config or a ConfigError, and
any byte range reads exactly what the origin holds."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiercache import TierCacheFileSystem
from tiercache.config import ConfigError, load_config, parse_config

MiB = 1 << 20


# -- config ------------------------------------------------------------------------------------
def _toml(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(f'[[tiers]]\nname = "ram"\npath = "{tmp_path}/ram"\ncapacity = "1MiB"\n' + body)
    return path


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = _toml(tmp_path, "[origin]\nretries = 3\ntimeout_seconds = = 4\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "line 7" in str(info.value)


BAD_VALUES = [
    ("[origin]\nretries = -1", "origin.retries"),
    ("[origin]\ntimeout_seconds = 0", "origin.timeout_seconds"),
    ("[origin]\nretry = 3", "origin.retry"),
    ('[origin]\noffline = "yes"', "origin.offline"),
    ('[validation]\nmode = "sometimes"', "validation.mode"),
    ("[metrics]\nport = 70000", "metrics.port"),
    ('[prefetch]\ndepth_bytes = "1XB"', "prefetch.depth_bytes"),
    ("[promotion]\nhits = -1", "promotion.hits"),
    ('[admission]\ntier = "nvme"', "admission.tier"),
    ('[[tiers]]\nname = "ram"\npath = "/tmp/x"\ncapacity = 1', "tiers.name"),
    ('[[tiers]]\nname = "ssd"\npath = "/tmp/x"\ncapacity = "lots"', "tiers[1].capacity"),
    ('[[tiers]]\nname = "ssd"\npath = "/tmp/x"\ncapacity = 1\neviction = "nope"', "tiers[1]"),
    ('[[tiers]]\nname = "ssd"\npath = "/tmp/x"\ncapacity = 1\nverify = "never"', "tiers[1].verify"),
    ('[[tiers]]\nname = "ssd"\ncapacity = 1', "tiers[1].path"),
    ('[[tiers]]\nname = "s s"\npath = "/tmp/x"\ncapacity = 1', "tiers[1].name"),
    ("trace = 5", "trace"),
]


@pytest.mark.parametrize(("body", "key"), BAD_VALUES, ids=[k for _, k in BAD_VALUES])
def test_bad_config_value_names_file_and_key(tmp_path: Path, body: str, key: str) -> None:
    path = _toml(tmp_path, body + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value), info.value
    assert key in str(info.value), info.value


_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        ["1MiB", "10%", "0", "-1", "1e400", "nan", "inf", "64KiB", "1.5GB", "%", "lru", "lz4"]
    ),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
_TIER_KEYS = ["name", "path", "capacity", "eviction", "compression", "verify", "min_free",
              "small_object_bytes", "bogus"]  # fmt: skip
_SECTIONS = {
    "validation": ["mode", "ttl_seconds"],
    "prefetch": ["depth_bytes", "concurrency"],
    "promotion": ["hits"],
    "admission": ["tier"],
    "origin": ["retries", "timeout_seconds", "concurrency", "offline"],
    "metrics": ["port", "bind"],
    "index": ["path"],
}


@st.composite
def _configs(draw: st.DrawFn) -> dict[str, Any]:
    base = Path(tempfile.gettempdir()) / "tiercache-fuzz"

    def table(keys: list[str]) -> dict[str, Any]:
        chosen = draw(st.lists(st.sampled_from(keys), unique=True, max_size=len(keys)))
        return {k: draw(_VALUES) for k in chosen}

    def tier() -> Any:
        if draw(st.integers(0, 9)) == 0:
            return draw(_VALUES)
        t = table(_TIER_KEYS)
        if draw(st.booleans()):  # mostly plausible, so parsing gets past the first key
            t.update(name=draw(st.sampled_from(["ram", "ssd", "x-1"])),
                     path=str(base / draw(st.text(max_size=8))),
                     capacity=draw(st.sampled_from(["1MiB", 4096, "50%"])))  # fmt: skip
        return t

    config: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        config["tiers"] = [tier() for _ in range(draw(st.integers(0, 3)))]
    elif draw(st.booleans()):
        config["tiers"] = draw(_VALUES)
    for name, keys in _SECTIONS.items():
        if draw(st.booleans()):
            config[name] = table(keys) if draw(st.integers(0, 5)) else draw(_VALUES)
    if draw(st.booleans()):
        config[draw(st.sampled_from(["trace", "unknown"]))] = draw(_VALUES)
    return config


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_configs())
def test_any_config_dict_is_a_config_or_a_config_error(config: dict[str, Any]) -> None:
    try:
        parsed = parse_config(config)
    except ConfigError as exc:
        assert str(exc)  # says something
        return
    assert parsed.tiers and all(t.capacity >= 0 for t in parsed.tiers)


# -- traces and shard indexes -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('{"key": "a", "size": 10}\n{"key": "b", "size": 10}\nnot json\n', 3),
        ('{"key": "a", "size": 10}\n{"key": "", "size": 10}\n', 2),
        ('{"key": "a", "size": -5}\n', 1),
        ('{"key": "a", "size": "big"}\n', 1),
    ],
)
def test_malformed_trace_names_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    from tiercache.simulate import TraceError, read_trace

    path = tmp_path / "t.jsonl"
    path.write_text(text)
    with pytest.raises(TraceError, match=f"{path}:{line}"):
        read_trace(path)


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    from tiercache.torch import write_shards

    url = tmp_path / "shards"
    write_shards([os.urandom(100) for _ in range(50)], str(url), shard_bytes=1000)
    return url


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("manifest.json", b"{not json"),
        ("manifest.json", b'{"format": "tiercache.records", "version": 1}'),
        ("manifest.json", b"[1, 2, 3]"),
        ("index.npy", b"\x93NUMPY garbage"),
        ("index.npy", b""),
    ],
    ids=[
        "manifest-not-json",
        "manifest-missing-keys",
        "manifest-not-object",
        "index-garbage",
        "index-empty",
    ],  # fmt: skip
)
def test_malformed_shard_index_names_the_file(shards: Path, name: str, damage: bytes) -> None:
    from tiercache.torch import RecordDataset

    (shards / name).write_bytes(damage)
    with pytest.raises(ValueError) as info:
        RecordDataset(str(shards), cache=False)
    assert f"{shards}/{name}" in str(info.value), info.value


# -- ranged reads -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ranged() -> Iterator[tuple[TierCacheFileSystem, dict[str, bytes]]]:
    """Objects in every kind of place: RAM small store, RAM mapped blob, SSD blob, SSD lz4
    blob, empty and one-byte objects; read once so every later read is a hit."""
    token = uuid.uuid4().hex[:10]
    dirs = {"ram": Path("/dev/shm") / f"tiercache-fuzz-{token}",
            "ssd": Path(tempfile.mkdtemp(prefix="tiercache-fuzz-"))}  # fmt: skip
    from tests.conftest import make_config

    config = make_config(
        dirs,
        ram="128KiB",
        ssd="8MiB",
        tier_extra={"ram": {"small_object_bytes": 4096}, "ssd": {"compression": "lz4"}},
    )
    mem = fsspec.filesystem("memory", skip_instance_cache=True)
    rng = random.Random(5)
    objs = {
        f"/fuzz-{token}/empty": b"",
        f"/fuzz-{token}/one": b"1",
        f"/fuzz-{token}/small": rng.randbytes(1000),
        f"/fuzz-{token}/mapped": rng.randbytes(50_000),
        f"/fuzz-{token}/big": rng.randbytes(300_000),
        f"/fuzz-{token}/packed": b"tiercache " * 30_000,
    }
    for path, body in objs.items():
        mem.pipe_file(path, body)
    fs = TierCacheFileSystem(config=config, fs=mem)
    for path in objs:
        fs.cat_file(path)
    entries = [fs.cache.index.get(f"memory://{p}") for p in objs]
    tiers = {e.tier for e in entries if e is not None}
    assert tiers == {0, 1}
    yield fs, objs
    from tiercache.cache import close_all

    close_all()
    TierCacheFileSystem.clear_instance_cache()
    shutil.rmtree(dirs["ram"], ignore_errors=True)
    shutil.rmtree(dirs["ssd"], ignore_errors=True)


_OFFSET = st.one_of(st.none(), st.integers(-400_000, 400_000), st.integers(-3, 3))


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(which=st.integers(0, 5), start=_OFFSET, end=_OFFSET)
def test_any_range_reads_what_the_origin_holds(
    ranged: tuple[TierCacheFileSystem, dict[str, bytes]],
    which: int,
    start: int | None,
    end: int | None,
) -> None:
    fs, objs = ranged
    path = list(objs)[which]
    assert fs.cat_file(path, start=start, end=end) == objs[path][start:end]


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    which=st.integers(0, 5),
    steps=st.lists(st.tuples(st.integers(0, 400_000), st.integers(-1, 100_000)), max_size=5),
)
def test_any_seek_and_read_sequence_matches(
    ranged: tuple[TierCacheFileSystem, dict[str, bytes]],
    which: int,
    steps: list[tuple[int, int]],
) -> None:
    fs, objs = ranged
    path = list(objs)[which]
    body = objs[path]
    with fs.open(path) as f:
        for pos, n in steps:
            f.seek(pos)
            want = body[pos:] if n < 0 else body[pos : pos + n]
            assert f.read(n) == want
            assert f.tell() == pos + len(want)
