"""Our algorithms against libCacheSim's on the same traces: miss ratios within 0.01.

Object and byte miss ratios at 10%, 25% and 50% of the working set, on per-epoch
permutations, Zipf 0.8 / 0.9 / 1.0, a scan-and-loop mix and variable sizes.
"""

from __future__ import annotations

from functools import cache

import pytest

from . import traces
from .reference import LIBCACHESIM, miss_ratios_libcachesim, miss_ratios_ours

pytest.importorskip("libcachesim")

TOLERANCE = 0.01
FRACTIONS = (0.10, 0.25, 0.50)


@cache
def trace(name: str, seed: int = 0) -> traces.Trace:
    if name == "epochs":
        return traces.epochs(seed=1 + seed)
    if name.startswith("zipf"):
        return traces.zipf(float(name[4:]), n_requests=30_000)
    if name == "scan_loop":
        return traces.scan_loop(n_requests=30_000)
    if name == "variable_sizes":
        return traces.variable_sizes(n_requests=30_000)
    raise KeyError(name)


TRACES = ("epochs", "zipf0.8", "zipf0.9", "zipf1.0", "scan_loop", "variable_sizes")


def _params(algorithm: str, trace_name: str) -> dict[str, object]:
    # The one documented difference that changes results: libCacheSim's W-TinyLFU refuses keys
    # larger than its 1% window. Ask ours to do the same when sizes vary.
    if algorithm == "wtinylfu" and trace_name == "variable_sizes":
        return {"window_limits_size": True}
    return {}


@pytest.mark.parametrize("trace_name", TRACES)
@pytest.mark.parametrize("algorithm", sorted(LIBCACHESIM))
def test_miss_ratios_agree_with_libcachesim(algorithm: str, trace_name: str) -> None:
    # W-TinyLFU's admission compares approximate counts whose collisions depend on the hash
    # function; on epoch traces every key is equally frequent, so those collisions decide
    # nearly every contest and single runs scatter by ~0.01 in both simulators. Compare the
    # mean over a few traces there.
    seeds = range(4) if (algorithm, trace_name) == ("wtinylfu", "epochs") else range(1)
    failures = []
    for fraction in FRACTIONS:
        theirs = [0.0, 0.0]
        ours = [0.0, 0.0]
        for seed in seeds:
            t = trace(trace_name, seed)
            capacity = int(traces.working_set(t) * fraction)
            for i, value in enumerate(miss_ratios_libcachesim(algorithm, capacity, t)):
                theirs[i] += value / len(seeds)
            for i, value in enumerate(
                miss_ratios_ours(algorithm, capacity, t, **_params(algorithm, trace_name))
            ):
                ours[i] += value / len(seeds)
        for kind, a, b in (("object", theirs[0], ours[0]), ("byte", theirs[1], ours[1])):
            if abs(a - b) > TOLERANCE:
                failures.append(f"{fraction:.0%} {kind}: libCacheSim {a:.4f}, ours {b:.4f}")
    assert not failures, f"{algorithm} on {trace_name}: " + "; ".join(failures)
