"""Use the installed wheel the way a user would, from outside the source tree.

Run by ``.ci/packaging`` with the Python of a fresh venv that holds only the wheel and its
dependencies, from a temporary directory, so ``import tiercache`` cannot find the checkout:
a module or data file missing from the wheel, or an import of a test-only package, fails
here. Usage: ``python wheel_smoke.py WORKDIR`` (a scratch directory it may fill).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path


def run(*args: str) -> str:
    """Run the installed ``tiercache`` command; its output, or exit with what went wrong."""
    exe = Path(sys.executable).with_name("tiercache")
    done = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        sys.exit(f"tiercache {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return done.stdout


def main() -> None:
    work = Path(sys.argv[1]).resolve()
    import tiercache
    from tiercache.cli import build_parser
    from tiercache.config import load_config, preset_names

    installed = Path(tiercache.__file__).resolve()
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert installed.is_relative_to(site), f"tiercache imported from {installed}, not {site}"
    print(f"tiercache {tiercache.__version__} from {installed.parent}")

    # The command and each subcommand's help (argparse formats help lazily: a bad help
    # string only fails when it is printed).
    assert "usage: tiercache" in run("--help")
    parser = build_parser()
    commands = next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command in commands:
        run(command, "--help")

    # The policy presets are package data: each must load from the wheel.
    presets = preset_names()
    assert {"default", "training"} <= set(presets), presets
    for name in presets:
        load_config(name)

    # simulate on a small trace (key,size per line).
    trace = work / "trace.csv"
    trace.write_text("".join(f"k{i % 7},{100 + i % 3}\n" for i in range(200)))
    results = json.loads(run("simulate", str(trace), "--eviction", "lru,s3fifo",
                             "--capacity", "50%", "--json", "--no-progress"))  # fmt: skip
    assert len(results) == 2 and all(0 <= r["miss_ratio"] <= 1 for r in results), results

    # One read through tiercache::file:// with tiers in the scratch directory.
    import fsspec

    origin = work / "origin"
    origin.mkdir()
    data = os.urandom(256 * 1024)
    (origin / "shard-0.bin").write_bytes(data)
    shm = Path(f"/dev/shm/tiercache-ci-wheel-{os.getpid()}")
    config = {
        "tiers": [
            {"name": "ram", "path": str(shm), "capacity": "8MiB"},
            {"name": "ssd", "path": str(work / "ssd"), "capacity": "32MiB"},
        ],
        "index": {"path": str(work / "index")},
    }
    try:
        for _ in range(2):  # a miss, then a hit
            url = f"tiercache::file://{origin}/shard-0.bin"
            with fsspec.open(url, "rb", tiercache={"config": config}) as f:
                assert f.read() == data
        fs = fsspec.filesystem("tiercache", target_protocol="file", config=config)
        stats = fs.stats()
        print("read through tiercache::file:// ok:", json.dumps(stats["origin"]))
        assert stats["origin"]["reads"] == 1, stats
    finally:
        shutil.rmtree(shm, ignore_errors=True)
    print("wheel smoke test passed")


if __name__ == "__main__":
    main()
