"""Attention rollout: the cls row carried as a vector (now) against the dense N x N method (before), one run.

Each cell runs in its own process, so peak RSS is that cell's alone. The dense method is the reference kept in
``tests/inference/test_rollout.py``; at 16x448 (N = 12545 tokens) it is not run, only its matrix size stated.

    python benchmarks/bench_explain.py [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

from timing import run_worker

ROOT = Path(__file__).resolve().parent.parent


def worker(model_name: str, method: str) -> dict:
    import torch

    import timesformer
    from timesformer.inference.explain import attention_rollout

    torch.manual_seed(0)
    model = timesformer.create_model(model_name, num_classes=400).eval()
    cfg = model.config
    video = torch.randn(1, cfg.num_frames, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        start = time.perf_counter()
        model(video)
        forward_s = time.perf_counter() - start
        start = time.perf_counter()  # the forward that rollout runs: every stage keeps its probabilities
        cls, x, ctx = model.embed(video)
        ctx.record = []
        for block in model.blocks:
            cls, x = block(cls, x, ctx)
        recording_s = time.perf_counter() - start
        del ctx
    start = time.perf_counter()
    if method == "vector":
        maps = attention_rollout(model, video)["maps"]
    else:
        sys.path.insert(0, str(ROOT))
        from tests.inference.test_rollout import _dense_rollout

        maps = _dense_rollout(model, video)[0].float()
    seconds = time.perf_counter() - start
    return {
        "s": seconds,
        "forward_s": forward_s,
        "recording_s": recording_s,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "maps": maps.flatten()[:4096].tolist(),
    }


def run(model_name: str, method: str, threads: int) -> dict:
    return run_worker(__file__, ["--worker", model_name, method], threads)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
        print(json.dumps(worker(*args.worker)))
        return
    import torch

    rows = []
    for model_name, methods in (("timesformer_base", ("dense", "vector")), ("timesformer_hr", ("vector",))):
        for method in methods:
            r = run(model_name, method, args.threads)
            rows.append((model_name, method, r))
            print(f"# {model_name} {method}: s {r['s']:.2f} peak {r['peak_mb']:.0f} MiB", file=sys.stderr)
    dense = next(r for m, k, r in rows if m == "timesformer_base" and k == "dense")
    vector = next(r for m, k, r in rows if m == "timesformer_base" and k == "vector")
    same = max(abs(a - b) for a, b in zip(dense["maps"], vector["maps"]))
    print(
        f"\ntorch {torch.__version__}, {args.threads} CPU threads; divided attention, one clip, random init; "
        f"base maps: max |vector - dense| = {same:.1e}\n"
    )
    print(
        "| model | method | tokens N | rollout (s, forward with probabilities included) | plain forward (s) | "
        "forward keeping probabilities (s) | rollout past that forward (s) | peak RSS (MiB) | vs dense |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for model_name, method, r in rows:
        cfg = __import__("timesformer").get_config(model_name)
        n = 1 + cfg.num_frames * (cfg.image_size // cfg.patch_size) ** 2
        ratio = f"{dense['s'] / r['s']:.1f}x faster" if model_name == "timesformer_base" and method == "vector" else ""
        print(
            f"| {model_name} ({cfg.num_frames}x{cfg.image_size}) | {method} | {n} | {r['s']:.2f} | "
            f"{r['forward_s']:.2f} | {r['recording_s']:.2f} | {max(r['s'] - r['recording_s'], 0):.2f} | "
            f"{r['peak_mb']:.0f} | {ratio} |"
        )
    n = 1 + 16 * 28 * 28
    print(
        f"\nThe dense method at 16x448 would hold float64 {n}x{n} matrices: {n * n * 8 / 2**30:.2f} GiB each (not run)."
    )


if __name__ == "__main__":
    main()
