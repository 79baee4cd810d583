"""Byte sizes as people write them: ``4096``, ``"512MiB"``, ``"2GiB"``, ``"1.5GB"``, ``"10%"``."""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")
_PERCENT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*%\s*$")


def parse_size(value: str | int | float, *, key: str = "size", total: int | None = None) -> int:
    """Parse a byte count; ``"N%"`` is a share of ``total`` (a filesystem, a working set).

    Raises ValueError naming ``key``, the bad value and the accepted forms.
    """
    allowed = 'an integer number of bytes, "512MiB", "2GiB", "1.5GB"' + (
        ' or "10%"' if total is not None else ""
    )
    if isinstance(value, bool):
        raise ValueError(f"{key} = {value!r} is not a size; use {allowed}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{key} = {value!r} is negative; use {allowed}")
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"{key} = {value!r} is not a size; use {allowed}")
    percent = _PERCENT.match(value)
    if percent:
        if total is None:
            raise ValueError(f"{key} = {value!r}: a percentage is not allowed here; use {allowed}")
        share = float(percent.group(1))
        if share > 100:
            raise ValueError(f"{key} = {value!r}: a percentage must be at most 100%")
        return int(total * share / 100)
    match = _SIZE.match(value)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"{key} = {value!r} is not a size; use {allowed}")
    return int(float(match.group(1)) * _UNITS[unit])


def format_size(n: float) -> str:
    """Human-readable bytes for tables: ``4.0 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
