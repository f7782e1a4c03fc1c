"""Timing statistics and the interleaved run order: pure functions, testable on a fake clock."""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile with linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(latencies_s: Sequence[float], items_per_run: Sequence[float]) -> dict[str, float]:
    """Latency percentiles in ms and throughput in items/s over all timed runs.

    Throughput is total items over total time, not the mean of per-run rates, so a few slow runs
    weigh as much as the time they really cost.
    """
    if len(latencies_s) != len(items_per_run):
        raise ValueError("one item count per run is needed")
    total = sum(latencies_s)
    mean = total / len(latencies_s)
    var = sum((x - mean) ** 2 for x in latencies_s) / max(1, len(latencies_s) - 1)
    out = {f"p{q}_ms": percentile(latencies_s, q) * 1e3 for q in PERCENTILES}
    out |= {"mean_ms": mean * 1e3, "std_ms": math.sqrt(var) * 1e3, "min_ms": min(latencies_s) * 1e3}
    out["throughput"] = sum(items_per_run) / total if total > 0 else float("inf")
    return out


def interleave(n_workers: int, runs: int, block: int) -> list[tuple[int, int]]:
    """The run order as (worker index, runs in this block): round-robin blocks, rotating who goes first.

    Every worker gets `runs` runs in blocks of at most `block`. Round r starts with worker r mod n,
    so no artifact always runs first after a pause, and a slow drift of the machine (thermal, a
    neighbour's job) spreads over all artifacts instead of landing on one.

    >>> interleave(2, 5, 2)
    [(0, 2), (1, 2), (1, 2), (0, 2), (0, 1), (1, 1)]
    """
    if n_workers < 1 or runs < 1 or block < 1:
        raise ValueError("workers, runs and block must be positive")
    order, done, r = [], 0, 0
    while done < runs:
        n = min(block, runs - done)
        order += [((r + i) % n_workers, n) for i in range(n_workers)]
        done += n
        r += 1
    return order


def time_runs(call: Callable[[int], object], n: int, start: int, n_inputs: int,
              clock: Callable[[], float] = time.perf_counter) -> tuple[list[float], list[int]]:
    """Time `n` calls of `call(input_index)`, cycling through `n_inputs` inputs from `start`.

    Returns (seconds per call, input index per call). Only the call is inside the timer.
    """
    latencies, used = [], []
    for i in range(n):
        j = (start + i) % n_inputs
        t0 = clock()
        call(j)
        latencies.append(clock() - t0)
        used.append(j)
    return latencies, used
