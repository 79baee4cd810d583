"""Check at import that the libraries tiercache needs are new enough, with a clear message.

Why: pip installs tiercache next to whatever versions another package pinned, and an old
library fails far from the cause: fsspec before 2025.10.0 has no ``ChainedFileSystem`` (an
ImportError deep in ``tiercache.fs``), py-lmdb before 2.0.0 breaks forked DataLoader
workers (``MDB_BAD_RSLOT``, segfaults), prometheus-client before 0.20.0 fails when metrics
are served. Checked here instead, each names the package, the version found and the version
needed.

The floors are read from tiercache's own package metadata (``Requires-Dist``, written from
``pyproject.toml``), so ``pyproject.toml`` stays the one place they are declared. Where
tiercache runs from a source tree that was never installed there is no metadata, and
nothing is checked.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import metadata

DISTRIBUTION = "tiercache"

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*)(?:;(.*))?$")
_FLOOR = re.compile(r"(?:>=|==|~=)\s*([0-9][^,\s]*)")
_EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


class DependencyVersionError(ImportError):
    """An installed library is older than the oldest version tiercache works with."""


def canonical(name: str) -> str:
    """PEP 503 name: ``Prometheus_Client`` -> ``prometheus-client``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: ``"2.13.0+cpu"`` -> ``(2, 13, 0)``.

    Pre-release and local parts are ignored: a floor says which release a feature first
    shipped in, and comparing releases is all the check needs.
    """
    match = re.match(r"\d+(?:\.\d+)*", version.strip())
    if not match:
        return ()
    parts = [int(p) for p in match.group(0).split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


@lru_cache(maxsize=1)
def declared_floors() -> dict[str | None, dict[str, str]]:
    """Floors by extra (``None`` for the core dependencies), then by package name.

    Requirements under another environment marker (``tomli; python_version < "3.11"``) are
    left out: whether they apply is pip's business, and an unused one is harmless.
    """
    try:
        requires = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return {}
    floors: dict[str | None, dict[str, str]] = {}
    for text in requires:
        match = _REQUIREMENT.match(text)
        if not match:
            continue
        name, _, spec, marker = match.groups()
        extra = None
        if marker:
            found = _EXTRA.search(marker)
            if not found or _EXTRA.sub("", marker).strip(" ()andor"):
                continue  # a marker other than "extra == ..."
            extra = found.group(1)
        floor = _FLOOR.search(spec or "")
        if canonical(name) == DISTRIBUTION or not floor:
            continue
        floors.setdefault(extra, {})[canonical(name)] = floor.group(1)
    return floors


def installed_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None where it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def require(extra: str | None = None) -> None:
    """Raise :class:`DependencyVersionError` if a library of ``extra`` is too old.

    ``extra=None`` checks the core dependencies. A library that is not installed at all is
    left to its own ImportError, which already names it.
    """
    problems = []
    for name, floor in declared_floors().get(extra, {}).items():
        found = installed_version(name)
        if found is not None and release(found) < release(floor):
            problems.append(f"{name} {found} is installed, tiercache needs {name}>={floor}")
    if problems:
        what = "tiercache" if extra is None else f"tiercache[{extra}]"
        raise DependencyVersionError(
            f"{what}: {'; '.join(problems)}. Upgrade with: pip install "
            + " ".join(f"'{p.rsplit(' needs ', 1)[1]}'" for p in problems)
        )


def require_torch_numpy_pair() -> None:
    """torch before 2.3 was built against NumPy 1 and cannot use NumPy 2.

    Such a torch imports, then fails at the first ``torch.from_numpy`` ("Numpy is not
    available"), inside a DataLoader worker. Both packages satisfy their own floors, so
    :func:`require` does not see it; named here before the first batch.
    """
    torch_version = installed_version("torch")
    numpy_version = installed_version("numpy")
    if torch_version is None or numpy_version is None:
        return
    if release(torch_version) < (2, 3) and release(numpy_version) >= (2,):
        raise DependencyVersionError(
            f"tiercache[torch]: torch {torch_version} cannot use numpy {numpy_version} "
            "(torch before 2.3 was built against NumPy 1). Install 'torch>=2.3' or 'numpy<2'."
        )
