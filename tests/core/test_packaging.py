"""Packaging: the floor constraints CI installs, import-time version checks, the version.

The floors themselves are exercised by ``.ci/run``'s "oldest" step (a venv holding exactly
the floors runs a subset of this suite); these tests check the pieces that step relies on
and what a user with an old library sees.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import tiercache
from tiercache.cli import main as cli_main
from tiercache.dependencies import release

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / ".ci" / "floor_constraints.py"


def generate(pyproject: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATOR), "--pyproject", str(pyproject), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def pins(text: str) -> dict[str, str]:
    """``name==version`` lines of a constraints file (marker and comment dropped)."""
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].split(";", 1)[0].strip()
        if line:
            name, version = line.split("==")
            out[name] = version
    return out


def test_constraints_pin_every_declared_dependency_of_this_project_to_its_floor() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for reqs in project["optional-dependencies"].values():
        declared += reqs
    result = generate(ROOT / "pyproject.toml", "--override", "torch==2.13.0")
    assert result.returncode == 0, result.stderr
    pinned = pins(result.stdout)
    for text in declared:
        name = re.split(r"[\[<>=~;! ]", text, maxsplit=1)[0].lower().replace("_", "-")
        if name == "tiercache":
            continue
        floor = re.search(r">=\s*([^,;\s]+)", text)
        assert floor, f"{text}: no floor declared"
        expected = "2.13.0" if name == "torch" else floor.group(1)
        assert pinned.get(name) == expected, f"{text}: pinned {pinned.get(name)}"
    assert "declared floor" in result.stdout  # the torch override says so in the file


def test_constraints_handle_any_extra_markers_and_self_references(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        "[project]\nname = 'demo-pkg'\nversion = '1.0'\n"
        "dependencies = ['Requests>=2.31.0', 'tomli>=2.0.1; python_version < \"3.11\"']\n"
        "[project.optional-dependencies]\n"
        "arrow = ['pyarrow>=15.0.0,<99']\n"
        "all = ['demo-pkg[arrow]', 'moto[server]~=5.1']\n"
    )
    result = generate(tmp_path / "pyproject.toml", "-o", str(tmp_path / "floors.txt"))
    assert result.returncode == 0, result.stderr
    lines = [
        line.split("  #")[0]
        for line in (tmp_path / "floors.txt").read_text().splitlines()
        if not line.startswith("#")
    ]
    assert lines == [
        "moto==5.1",
        "pyarrow==15.0.0",
        "requests==2.31.0",
        'tomli==2.0.1; python_version < "3.11"',
    ]


@pytest.mark.parametrize(
    ("deps", "message"),
    [
        ("dependencies = ['lz4']", "lz4: declare exactly one floor"),
        ("dependencies = ['lz4<5']", "lz4<5: declare exactly one floor"),
        (
            "dependencies = ['lz4>=4.1']\n[project.optional-dependencies]\nx = ['lz4>=4.3']",
            "lz4 is declared with floor 4.1 in core and 4.3 in extra x",
        ),
    ],
)
def test_constraints_refuse_what_cannot_be_pinned(tmp_path: Path, deps: str, message: str) -> None:
    (tmp_path / "pyproject.toml").write_text(f"[project]\nname = 'p'\nversion = '1'\n{deps}\n")
    result = generate(tmp_path / "pyproject.toml")
    assert result.returncode != 0
    assert message in result.stderr


def fake_distribution(where: Path, name: str, version: str) -> None:
    """A dist-info that importlib.metadata finds before the real one (PYTHONPATH first)."""
    info = where / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def import_with(where: Path, module: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(where)}
    return subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        capture_output=True, text=True, env=env, cwd=where, timeout=120,
    )  # fmt: skip


def test_an_old_fsspec_is_named_at_import_with_the_version_needed(tmp_path: Path) -> None:
    fake_distribution(tmp_path, "fsspec", "2025.9.0")
    result = import_with(tmp_path, "tiercache")
    assert result.returncode != 0
    assert "DependencyVersionError" in result.stderr
    assert "fsspec 2025.9.0 is installed, tiercache needs fsspec>=2025.10.0" in result.stderr
    assert "ChainedFileSystem" not in result.stderr  # the check runs before fs.py's import


def test_torch_before_2_3_with_numpy_2_is_named_before_the_first_batch(tmp_path: Path) -> None:
    fake_distribution(tmp_path, "torch", "2.2.2")
    fake_distribution(tmp_path, "numpy", "2.1.0")
    result = import_with(tmp_path, "tiercache.torch")
    assert result.returncode != 0
    assert "torch 2.2.2 cannot use numpy 2.1.0" in result.stderr


def test_an_old_extra_library_is_named_when_the_extra_is_used(tmp_path: Path) -> None:
    fake_distribution(tmp_path, "numpy", "1.22.0")
    result = import_with(tmp_path, "tiercache.torch")
    assert result.returncode != 0
    assert "tiercache[torch]: numpy 1.22.0 is installed, tiercache needs numpy>=" in result.stderr


def test_release_compares_versions_as_numbers() -> None:
    assert release("2025.9.0") < release("2025.10.0")
    assert release("2.13.0+cpu") == release("2.13") > release("2.3")
    assert release("0.3.3.post4") >= release("0.3.3")


def test_version_is_the_installed_release_and_has_a_changelog_entry() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert tiercache.__version__ == metadata.version("tiercache") == pyproject["version"]
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[{re.escape(tiercache.__version__)}\]", changelog, re.M), (
        f"CHANGELOG.md has no section for {tiercache.__version__}"
    )


def commands() -> list[str]:
    import argparse

    from tiercache.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


@pytest.mark.parametrize("command", commands())
def test_every_command_prints_its_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli_main([command, "--help"])
    assert exited.value.code == 0
    assert f"usage: tiercache {command}" in capsys.readouterr().out
