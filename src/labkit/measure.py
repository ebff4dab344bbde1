"""Timing with warm-up and repeats; summaries as median and p95 with the raw samples
kept."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any


def summarize(samples: Sequence[float]) -> dict[str, Any]:
    """Median, p95 and p99 (nearest rank), min, max and count of `samples`, which must
    not be empty."""
    if len(samples) == 0:
        raise ValueError("summarize() needs at least one sample")
    ordered = sorted(float(s) for s in samples)

    def nearest_rank(q: int) -> float:  # the ceil(q/100 * n)-th smallest sample
        return ordered[max(1, -(-q * len(ordered) // 100)) - 1]

    return {
        "n": len(ordered),
        "median": statistics.median(ordered),
        "p95": nearest_rank(95),
        "p99": nearest_rank(99),
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
