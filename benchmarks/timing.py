"""Shared by the benchmark scripts (run as `python benchmarks/<script>.py`, so this folder is on sys.path)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time


def run_worker(script: str, args: list[str], threads: int) -> dict:
    """Run ``python script *args`` in its own process on ``threads`` threads (so its peak RSS is its own) and
    return the JSON object its last stdout line holds."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, script, *args], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
