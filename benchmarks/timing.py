"""Shared by the benchmark scripts (run as `python benchmarks/<script>.py`, so this folder is on sys.path)."""
from __future__ import annotations

import statistics
import time


def median_seconds(fn, reps: int, warmup: int = 1) -> float:
    """Median seconds per call after ``warmup`` calls (the shared 2-core machine is noisy; medians resist it)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
