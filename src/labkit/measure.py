"""Timing with warm-up and repeats; summaries as median and p95 with the raw samples
kept."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any


def summarize(samples: Sequence[float]) -> dict[str, Any]:
    """Median, p95 (nearest rank), min, max and count of `samples`, which must not be
    empty."""
    if len(samples) == 0:
        raise ValueError("summarize() needs at least one sample")
    ordered = sorted(float(s) for s in samples)
    rank = max(1, -(-95 * len(ordered) // 100))  # nearest-rank percentile: ceil(0.95 n)
    return {
        "n": len(ordered),
        "median": statistics.median(ordered),
        "p95": ordered[rank - 1],
        "min": ordered[0],
        "max": ordered[-1],
        "samples": ordered,
    }


def time_calls(
    fn: Callable[[], Any], *, repeats: int = 10, warmup: int = 2
) -> dict[str, Any]:
    """Call `fn` `warmup` times untimed, then `repeats` times timed; return summarize()
    of seconds."""
    if repeats < 1 or warmup < 0:
        raise ValueError(
            f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, "
            f"warmup={warmup}"
        )
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return summarize(seconds)
