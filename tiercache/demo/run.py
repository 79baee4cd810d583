"""The measured epoch loop shared by ``tiercache demo`` and ``benchmarks/dataloader.py``.

Each epoch reports what a trainer and an operator care about: samples/s and MB/s as the
training loop saw them, the share of cache requests each tier answered, the bytes read from
the origin, and two kinds of waiting: ``data_wait_s``, the time reader processes spent
waiting for bytes inside the cache (node-wide, summed over DataLoader workers), and
``loader_wait_s``, the time the training loop itself sat blocked on the DataLoader.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..torch.wait import DataWaitMeter


def _counts(stats: dict[str, Any]) -> dict[str, Any]:
    if not stats:
        return {}
    return {
        "requests": stats["requests"],
        "hits": stats["hits"],
        "tiers": {name: t["hits"] for name, t in stats["tiers"].items()},
        "moves": {
            f"{name}_{what}": t[what]
            for name, t in stats["tiers"].items()
            for what in ("admissions", "demotions", "evictions")
        },
        "origin_bytes": stats["origin"]["bytes"],
        "data_wait_s": stats["data_wait_seconds"],
        "prefetch_issued": stats["prefetch"]["issued"],
    }


def epoch_row(epoch: int, samples: int, sample_bytes: int, seconds: float,
              before: dict[str, Any], after: dict[str, Any], loader_wait: float,
              loss: float | None) -> dict[str, Any]:  # fmt: skip
    """One epoch's report from counter snapshots taken before and after it."""
    row: dict[str, Any] = {
        "epoch": epoch,
        "samples": samples,
        "seconds": seconds,
        "samples_per_s": samples / seconds if seconds > 0 else 0.0,
        "bytes_per_s": samples * sample_bytes / seconds if seconds > 0 else 0.0,
    }
    if before and after:
        requests = after["requests"] - before["requests"]
        hits = after["hits"] - before["hits"]
        row["hit_ratio"] = hits / requests if requests else 0.0
        row["tier_hit_ratio"] = {
            name: (after["tiers"][name] - before["tiers"][name]) / requests if requests else 0.0
            for name in after["tiers"]
        }
        row["origin_bytes"] = after["origin_bytes"] - before["origin_bytes"]
        row["data_wait_s"] = after["data_wait_s"] - before["data_wait_s"]
        row["prefetched"] = after["prefetch_issued"] - before["prefetch_issued"]
        # Where the bytes went: admissions, demotions and evictions per tier.
        row["moves"] = {k: v - before["moves"][k] for k, v in after["moves"].items()}
    row["loader_wait_s"] = loader_wait
    if loss is not None:
        row["loss"] = loss
    return row


@dataclass(frozen=True)
class EpochStart:
    """The clock and the counters when epoch 1 began.

    Take it before making the sampler: a hinting sampler sets the cache fetching as soon
    as it exists, and that work belongs to epoch 1's time and origin bytes.
    """

    time: float
    counts: dict[str, Any]

    @classmethod
    def now(cls, stats: Callable[[], dict[str, Any]] | None = None) -> EpochStart:
        return cls(time.perf_counter(), _counts(stats()) if stats else {})


def run_epochs(loader: Iterable[Any], epochs: int, *, sample_bytes: int,
               step: Callable[[Any], float] | None = None,
               stats: Callable[[], dict[str, Any]] | None = None,
               total_batches: int | None = None, progress: bool = True,
               on_epoch: Callable[[dict[str, Any]], None] | None = None,
               desc: str = "epoch", max_seconds: float | None = None,
               start: EpochStart | None = None,
               ) -> list[dict[str, Any]]:  # fmt: skip
    """Run ``epochs`` passes over ``loader``, calling ``step(batch)`` per batch.

    ``max_seconds`` cuts an epoch short (a configuration that thrashes); its row then says
    ``"stopped": true`` and its rates cover the part that ran. ``start``: when the first
    epoch began, if before this call (see :class:`EpochStart`).
    """
    from tqdm import tqdm

    rows = []
    for epoch in range(1, epochs + 1):
        begin = start if epoch == 1 and start is not None else EpochStart.now(stats)
        before = begin.counts
        meter = DataWaitMeter()
        samples = 0
        loss = None
        bar = tqdm(total=total_batches, unit="batch", desc=f"{desc} {epoch}/{epochs}",
                   disable=not progress, leave=False, file=sys.stderr)  # fmt: skip
        started = begin.time
        stopped = False
        for batch in meter.wrap(loader):
            first = batch[0] if isinstance(batch, (list, tuple)) else batch
            samples += len(first)
            if step is not None:
                loss = step(batch)
            bar.update(1)
            if max_seconds is not None and time.perf_counter() - started > max_seconds:
                stopped = True
                break
            if bar.n % 16 == 0 and not bar.disable:
                elapsed = time.perf_counter() - started
                bar.set_postfix_str(
                    f"{samples / elapsed:,.0f} samples/s, "
                    f"{samples * sample_bytes / elapsed / 1e6:,.0f} MB/s",
                    refresh=False,
                )  # fmt: skip
        seconds = time.perf_counter() - started
        bar.close()
        after = _counts(stats()) if stats else {}
        row = epoch_row(epoch, samples, sample_bytes, seconds, before, after, meter.seconds, loss)
        if stopped:
            row["stopped"] = True
        rows.append(row)
        if on_epoch is not None:
            on_epoch(row)
    return rows


def table_header(tiers: Sequence[str]) -> str:
    cols = ["epoch", "samples/s", "MB/s", "hit %"] + [f"{t} %" for t in tiers]
    cols += ["origin MB", "data-wait s", "loader-wait s", "seconds"]
    widths = _widths(cols)
    return "  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True))


def table_row(row: dict[str, Any], tiers: Sequence[str]) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}"

    cells = [str(row["epoch"]), f"{row['samples_per_s']:,.0f}", f"{row['bytes_per_s'] / 1e6:,.0f}",
             pct(row.get("hit_ratio"))]  # fmt: skip
    cells += [pct(row.get("tier_hit_ratio", {}).get(t)) for t in tiers]
    origin = row.get("origin_bytes")
    wait = row.get("data_wait_s")
    cells += ["-" if origin is None else f"{origin / 1e6:,.0f}",
              "-" if wait is None else f"{wait:.2f}",
              f"{row['loader_wait_s']:.2f}", f"{row['seconds']:.1f}"]  # fmt: skip
    cols = ["epoch", "samples/s", "MB/s", "hit %"] + [f"{t} %" for t in tiers]
    cols += ["origin MB", "data-wait s", "loader-wait s", "seconds"]
    return "  ".join(c.rjust(w) for c, w in zip(cells, _widths(cols), strict=True))


def _widths(cols: list[str]) -> list[int]:
    return [max(len(c), 7) for c in cols]
