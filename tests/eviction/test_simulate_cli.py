"""``tiercache simulate`` as a user runs it: a subprocess on real trace files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiercache.simulate import TraceError, access_log_line, read_trace, simulate

REPO = Path(__file__).resolve().parents[2]


def tiercache(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "tiercache", "simulate", *args],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


@pytest.fixture
def epoch_csv(tmp_path: Path) -> Path:
    """Three epochs over 300 keys of 1000 bytes, fresh order each epoch, with a header."""
    import random

    rng = random.Random(4)
    lines = ["key,size"]
    for _ in range(3):
        keys = list(range(300))
        rng.shuffle(keys)
        lines += [f"shard-{k:05d}.tar,1000" for k in keys]
    path = tmp_path / "epochs.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_json_fields(epoch_csv: Path) -> None:
    proc = tiercache(str(epoch_csv), "--eviction", "lru,static", "--capacity", "50%,100000",
                     "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert len(results) == 4
    for r in results:
        assert {"eviction", "capacity_bytes", "requests", "hit_ratio", "byte_hit_ratio"} <= set(r)
        assert r["requests"] == 900
    by = {(r["eviction"], r["capacity_bytes"]): r for r in results}
    assert set(by) == {("lru", 150_000), ("static", 150_000), ("lru", 100_000),
                       ("static", 100_000)}  # fmt: skip
    # Static keeps the first half for epochs 2 and 3: 300 hits of 900.
    assert by[("static", 150_000)]["hit_ratio"] == pytest.approx(300 / 900)
    assert by[("lru", 150_000)]["hit_ratio"] < by[("static", 150_000)]["hit_ratio"]


def test_table_and_plot(epoch_csv: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    plot = tmp_path / "curves.png"
    proc = tiercache(str(epoch_csv), "--eviction", "lru,s3fifo,belady",
                     "--capacity", "10%,25%,50%", "--plot", str(plot))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("900 requests, 9 runs")
    assert lines[1].split()[:4] == ["eviction", "capacity", "of", "WSS"]
    assert sum(line.startswith("belady") for line in lines) == 3
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_parameters_on_the_command_line(epoch_csv: Path) -> None:
    proc = tiercache(str(epoch_csv), "--eviction", "s3fifo:small_ratio=0.2,belady:bypass=True",
                     "--capacity", "30%", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert results[0]["params"]["small_ratio"] == 0.2
    assert results[1]["params"]["bypass"] is True


def test_unknown_eviction_is_one_clear_line(epoch_csv: Path) -> None:
    proc = tiercache(str(epoch_csv), "--eviction", "lru,mru", "--capacity", "10%")
    assert proc.returncode == 1
    assert "unknown eviction 'mru'" in proc.stderr and "s3fifo" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_capacity(epoch_csv: Path) -> None:
    proc = tiercache(str(epoch_csv), "--capacity", "lots")
    assert proc.returncode == 1
    assert "--capacity" in proc.stderr and "'lots'" in proc.stderr


@pytest.mark.parametrize(
    ("content", "line", "words"),
    [
        ("key,size\na,10\nb,ten\n", 3, "'ten'"),
        ("a,10\nb,10,3\n", 2, "columns"),
        ("a,10\nb,-1\n", 2, "-1"),
        ("1.0,a,10\nx,b,10\n", 2, "time"),
        ('{"t":1,"key":"a","size":3}\n{"t":2,"key":"b"}\n', 2, '"size"'),
        ('{"t":1,"key":"a","size":3}\nnot json\n', 2, "not JSON"),
        ("a,b,c,d\n", 1, "columns"),
    ],
)
def test_malformed_trace_names_file_and_line(
    tmp_path: Path, content: str, line: int, words: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(TraceError) as info:
        read_trace(path)
    assert f"{path}:{line}:" in str(info.value) and words in str(info.value)
    proc = tiercache(str(path), "--eviction", "lru", "--capacity", "1000")
    assert proc.returncode == 1
    assert f"{path}:{line}:" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_trace_file(tmp_path: Path) -> None:
    proc = tiercache(str(tmp_path / "nope.csv"))
    assert proc.returncode == 1 and "nope.csv" in proc.stderr


def test_three_trace_formats_read_alike(tmp_path: Path) -> None:
    requests = [("a", 10), ("b", 20), ("a", 10), ("c", 5), ("b", 20)]
    plain = tmp_path / "plain.csv"
    plain.write_text("".join(f"{k},{s}\n" for k, s in requests))
    timed = tmp_path / "timed.csv"
    timed.write_text("time,key,size\n" + "".join(f"{i}.5,{k},{s}\n" for i, (k, s) in
                                                 enumerate(requests)))  # fmt: skip
    log = tmp_path / "access.jsonl"
    log.write_text("".join(access_log_line(100.0 + i, k, s, None if i < 2 else "ram", i >= 2)
                           for i, (k, s) in enumerate(requests)))  # fmt: skip
    read = [read_trace(p) for p in (plain, timed, log)]
    for trace in read:
        assert trace.keys == [0, 1, 0, 2, 1] and trace.sizes == [10, 20, 10, 5, 20]
        assert trace.names == ["a", "b", "c"] and trace.working_set == 35
    results = simulate(read[2], ["lru"], [30])
    # LRU at 30 bytes: a, b fill it; a hits; c evicts b; b misses.
    assert results[0]["hits"] == 1 and results[0]["byte_hit_ratio"] == pytest.approx(10 / 65)


def test_access_log_line_is_the_documented_shape() -> None:
    line = access_log_line(1.5, "s3://b/k", 7, "ssd", True)
    assert line.endswith("\n")
    assert json.loads(line) == {"t": 1.5, "key": "s3://b/k", "size": 7, "tier": "ssd", "hit": True}
