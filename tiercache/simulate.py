"""Replay an access trace through eviction algorithms: what ``tiercache simulate`` runs.

The policies are the very objects the engine uses (:mod:`tiercache.eviction`), so a simulated
hit ratio is what a tier of that size would get on that access pattern.

Trace formats (detected from the first line that is not blank or a ``#`` comment):

* CSV ``key,size``, one request per line, header optional;
* CSV ``time,key,size`` (the time is read and ignored; requests are replayed in file order);
* the cache's own access log, JSON lines written when the config sets ``trace = "path"``::

      {"t": 1718000000.25, "key": "s3://bucket/shard-00017.tar", "size": 67108864,
       "tier": "ram", "hit": true}

  ``t`` is Unix time in seconds, ``key`` the cached object's key, ``size`` its bytes, ``tier``
  the tier that served it (``null`` for the origin, i.e. a miss everywhere) and ``hit``
  whether any tier had it. Only ``key`` and ``size`` matter to the simulator.
  :func:`access_log_line` writes one such line.

A malformed line raises :class:`TraceError` naming the file and the line.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .eviction import EvictionPolicy, policy_from_spec

#: Requests per progress-bar update; keeps the bar's cost out of the inner loop.
_CHUNK = 1 << 16
#: Below this many requests in total a progress bar is noise.
_PROGRESS_MIN = 500_000


class TraceError(ValueError):
    """A trace file that cannot be read; the message names the file and line."""


@dataclass
class Trace:
    """Requests in order: ``keys[i]`` (a dense integer id per distinct key) of ``sizes[i]``."""

    keys: list[int]
    sizes: list[int]
    source: str = "<memory>"
    names: list[str] = field(default_factory=list)  # id -> original key

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def working_set(self) -> int:
        """Bytes of the distinct keys (each at its last seen size): what ``10%`` refers to."""
        last: dict[int, int] = {}
        for key, size in zip(self.keys, self.sizes, strict=True):
            last[key] = size
        return sum(last.values())

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes)


def access_log_line(t: float, key: str, size: int, tier: str | None, hit: bool) -> str:
    """One line of the access log (``trace = "path"`` in the config), newline included."""
    record = {"t": round(t, 6), "key": key, "size": int(size), "tier": tier, "hit": bool(hit)}
    return json.dumps(record, separators=(",", ":")) + "\n"


class _Builder:
    """Maps keys to dense ids while a trace is read (ints hash fast and deterministically)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.ids: dict[str, int] = {}
        self.keys: list[int] = []
        self.sizes: list[int] = []

    def add(self, key: str, size_text: object, line: int) -> None:
        if not key:
            raise TraceError(f"{self.source}:{line}: empty key")
        try:
            size = int(size_text)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise TraceError(
                f"{self.source}:{line}: size {size_text!r} is not an integer number of bytes"
            ) from None
        if size < 0 or isinstance(size_text, bool | float):
            raise TraceError(
                f"{self.source}:{line}: size {size_text!r} is not a non-negative integer"
            )
        ids = self.ids
        key_id = ids.get(key)
        if key_id is None:
            key_id = ids[key] = len(ids)
        self.keys.append(key_id)
        self.sizes.append(size)

    def trace(self) -> Trace:
        return Trace(self.keys, self.sizes, self.source, list(self.ids))


def read_trace(path: str | Path) -> Trace:
    """Read a trace file in any of the formats in the module docstring."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"trace file {source} does not exist") from None
    except UnicodeDecodeError as exc:
        raise TraceError(f"{source}: not a UTF-8 text trace ({exc.reason})") from None
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), None)
    if first is None:
        raise TraceError(f"{source}: no requests in the trace")
    builder = _Builder(source)
    if first.lstrip().startswith("{"):
        _read_jsonl(lines, builder)
    else:
        _read_csv(lines, builder)
    if not builder.keys:
        raise TraceError(f"{source}: no requests in the trace")
    return builder.trace()


def _read_jsonl(lines: list[str], builder: _Builder) -> None:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TraceError(f"{builder.source}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict) or "key" not in record or "size" not in record:
            raise TraceError(
                f'{builder.source}:{number}: an access-log line needs "key" and "size"'
            )
        builder.add(str(record["key"]), record["size"], number)


def _read_csv(lines: list[str], builder: _Builder) -> None:
    key_col = size_col = time_col = -1
    columns = 0
    for number, row in enumerate(csv.reader(io.StringIO("\n".join(lines))), 1):
        if not row or (len(row) == 1 and not row[0].strip()) or row[0].lstrip().startswith("#"):
            continue
        row = [cell.strip() for cell in row]
        if columns == 0:
            columns = len(row)
            if columns not in (2, 3):
                raise TraceError(
                    f"{builder.source}:{number}: expected 'key,size' or 'time,key,size', "
                    f"got {columns} columns"
                )
            key_col, size_col, time_col = (0, 1, -1) if columns == 2 else (1, 2, 0)
            names = [cell.lower() for cell in row]
            if "size" in names:
                # A header: take the column positions from its names.
                if "key" not in names:
                    raise TraceError(f"{builder.source}:{number}: the header has no 'key' column")
                key_col, size_col = names.index("key"), names.index("size")
                time_col = names.index("time") if "time" in names else -1
                continue
        if len(row) != columns:
            raise TraceError(
                f"{builder.source}:{number}: expected {columns} columns like the first line, "
                f"got {len(row)}"
            )
        if time_col >= 0:
            try:
                float(row[time_col])
            except ValueError:
                raise TraceError(
                    f"{builder.source}:{number}: time {row[time_col]!r} is not a number"
                ) from None
        builder.add(row[key_col], row[size_col], number)


def _spec_name(spec: str | Mapping[str, Any]) -> str:
    return spec if isinstance(spec, str) else str(spec.get("name"))


def run_policy(
    policy: EvictionPolicy, trace: Trace, progress: Any | None = None
) -> tuple[int, int, float]:
    """Replay ``trace`` through ``policy``; returns (hits, hit bytes, seconds)."""
    policy.hint(trace.keys)  # only clairvoyant algorithms look
    record, admit, insert = policy.record, policy.admit, policy.insert
    keys, sizes = trace.keys, trace.sizes
    hits = hit_bytes = 0
    start = time.perf_counter()
    for begin in range(0, len(keys), _CHUNK):
        end = begin + _CHUNK
        for key, size in zip(keys[begin:end], sizes[begin:end], strict=True):
            if record(key, size):
                hits += 1
                hit_bytes += size
            elif admit(key, size):
                insert(key, size)
        if progress is not None:
            progress.update(min(end, len(keys)) - begin)
    seconds = time.perf_counter() - start
    policy.check()
    return hits, hit_bytes, seconds


def simulate(
    trace: Trace | str | Path,
    names: Sequence[str | Mapping[str, Any]],
    capacities: Iterable[int],
    *,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Every algorithm in ``names`` at every capacity (bytes); one result dict per pair.

    A name may be a config-style spec, ``{"name": "s3fifo", "small_ratio": 0.2}``.
    """
    if not isinstance(trace, Trace):
        trace = read_trace(trace)
    capacities = list(capacities)
    # Build every policy first, so a bad name fails before minutes of simulation.
    runs = [(spec, cap, policy_from_spec(spec, cap)) for cap in capacities for spec in names]
    bar = None
    if progress and len(trace) * len(runs) >= _PROGRESS_MIN:
        from tqdm import tqdm

        bar = tqdm(
            total=len(trace) * len(runs), unit="req", unit_scale=True, file=sys.stderr,
            desc="simulating",
        )  # fmt: skip
    results = []
    total_bytes = trace.total_bytes
    try:
        for spec, capacity, policy in runs:
            hits, hit_bytes, seconds = run_policy(policy, trace, bar)
            requests = len(trace)
            results.append(
                {
                    "eviction": _spec_name(spec),
                    "params": policy.params(),
                    "capacity_bytes": capacity,
                    "requests": requests,
                    "hits": hits,
                    "hit_ratio": hits / requests,
                    "byte_hit_ratio": hit_bytes / total_bytes if total_bytes else 0.0,
                    "miss_ratio": 1 - hits / requests,
                    "byte_miss_ratio": 1 - hit_bytes / total_bytes if total_bytes else 0.0,
                    "seconds": seconds,
                    "requests_per_second": requests / seconds if seconds > 0 else float("inf"),
                }
            )
    finally:
        if bar is not None:
            bar.close()
    return results


def plot_miss_ratio_curves(
    results: Sequence[Mapping[str, Any]], path: str | Path, title: str = ""
) -> None:
    """Miss ratio against capacity, one line per algorithm, saved as an image at ``path``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'tiercache[plot]'") from None
    from .dependencies import require

    require("plot")
    from .sizes import format_size

    curves: dict[str, list[tuple[int, float]]] = {}
    for r in results:
        label = r["eviction"]
        curves.setdefault(label, []).append((r["capacity_bytes"], r["miss_ratio"]))
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for label, points in curves.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3, label=label)
    ax.set_xlabel("cache capacity")
    ax.set_ylabel("miss ratio")
    ax.set_ylim(0, 1.02)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: format_size(x)))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    if title:
        ax.set_title(title, fontsize="medium")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
