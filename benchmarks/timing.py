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


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; elsewhere what ``platform`` knows)."""
    import platform

    if not os.path.exists("/proc/cpuinfo"):
        return platform.processor()
    return next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )


def machine() -> str:
    """The CPU's model name and the ISA oneDNN dispatches to (from its verbose log of one bf16 matmul)."""
    name = cpu_name()
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; a = torch.ones(64, 64, dtype=torch.bfloat16); a @ a"],
        env=dict(os.environ, ONEDNN_VERBOSE="1"),
        capture_output=True,
        text=True,
    )
    isa = next((line.split("isa:", 1)[1].strip() for line in probe.stdout.splitlines() if "isa:" in line), "unknown")
    import torch

    return f"{name}; ATen CPU capability: {torch.backends.cpu.get_cpu_capability()}; oneDNN ISA: {isa}"


def interleaved(
    contestants: dict, pairs: int, warmup: int = 1, deadline: float | None = None
) -> dict[str, list[float]]:
    """Seconds per call of each of ``contestants`` (name -> callable), run in rounds A B C, A B C, ... in this one
    process, so that each round's contestants share the machine's state of the moment; ``warmup`` rounds first.
    ``deadline`` (a ``time.perf_counter()`` value): no round starts after it, though one round always runs."""
    for _ in range(warmup):
        for fn in contestants.values():
            fn()
    times = {name: [] for name in contestants}
    for k in range(pairs):
        if k and deadline is not None and time.perf_counter() > deadline:
            break
        for name, fn in contestants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def ratio_stats(numerator: list[float], denominator: list[float]) -> dict:
    """The per-round ratios ``numerator[i] / denominator[i]``: min, median, max and spread (max - min)."""
    ratios = sorted(a / b for a, b in zip(numerator, denominator))
    return {"min": ratios[0], "median": statistics.median(ratios), "max": ratios[-1], "spread": ratios[-1] - ratios[0]}


def cpu_flags() -> str:
    """The CPU's vector and matrix flags that decide the kernels (AVX-512 variants, AMX, VNNI, BF16)."""
    if not os.path.exists("/proc/cpuinfo"):
        return "unknown"
    flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    keep = [f for f in flags if f.startswith(("avx512", "amx", "avx_vnni")) or f in ("avx2", "fma")]
    return " ".join(keep) or "none of avx2/avx512/amx"
