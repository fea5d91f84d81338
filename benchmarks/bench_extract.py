"""Sharded batch inference (`timesformer extract --format shards`): videos/s at 1 and 2 processes (torchrun) with
0 and 2 DataLoader workers each, and an estimate for 1M videos.

The videos are 320x240, 6 s, 30 fps H.264 (libx264 defaults, a keyframe every 2 s), Kinetics-like; the list is one
such file copied (the content does not change decoding cost). Two models: `timesformer_tiny` (8x32, where decoding
is the cost) and `timesformer_base` (8x224, where the model is). Each row is one run of the real command in fresh
processes on all the machine's cores; two processes get one thread each (torchrun's default). Reported: wall time
of the command, and the steady rate, which leaves out start-up (imports, model load, rendezvous, first-call
warm-up): the videos of the shards written after every rank has written its first, over that window. Ratios (vs 1x0) are
against one process with 0 workers of the same model, in the same run.

    python benchmarks/bench_extract.py [--videos 48] [--base-videos 16] [--precision fp32]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_data import write_test_video
from timing import machine

ROOT = Path(__file__).resolve().parent.parent


def command(procs: int, *args: str) -> list[str]:
    if procs == 1:
        return [sys.executable, "-m", "timesformer", *args]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]
    return [*launcher, "-m", "timesformer", *args]


def run_extract(
    ckpt: Path,
    listing: Path,
    out: Path,
    procs: int,
    workers: int,
    shard: int,
    precision: str,
    device: str = "cpu",
    batch_size: int = 4,
    timeout: float | None = None,
) -> dict:
    """One run of the real command; ``device`` cpu (this script's, also where a GPU is present) or cuda
    (bench_gpu.py's). Raises ``subprocess.TimeoutExpired`` past ``timeout`` seconds."""
    args = ["extract", "--list", str(listing), "--checkpoint", str(ckpt), "--out", str(out), "--format", "shards"]
    args += ["--workers", str(workers), "--shard-size", str(shard), "--batch-size", str(batch_size)]
    args += ["--precision", precision, "--device", device]
    env = dict(os.environ, OMP_NUM_THREADS=str(max(os.cpu_count() // procs, 1)))
    start = time.time()
    proc = subprocess.run(command(procs, *args), env=env, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    wall = time.time() - start
    if proc.returncode:
        raise RuntimeError(f"extract failed ({procs} procs, {workers} workers):\n{proc.stderr[-3000:]}")
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert len(index) == len(listing.read_text().split()) and all(e["status"] == "ok" for e in index)
    # the steady window: from when every rank has written its first shard (start-up and warm-up behind all of
    # them) to the last shard; the rate counts the shards written inside it
    stamps = {int(p.name[6:11]): p.stat().st_mtime for p in out.glob("shard-*.safetensors")}
    start_all = max(min(t for k, t in stamps.items() if k % procs == rank) for rank in range(procs))
    inside = [t for t in stamps.values() if t > start_all]
    rate = len(inside) * shard / (max(inside) - start_all) if inside else float("nan")
    return {"wall": wall, "videos_per_s": len(index) / wall, "steady": rate}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=48, help="videos for the tiny model")
    ap.add_argument("--base-videos", type=int, default=16, help="videos for the base model")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    args = ap.parse_args()

    import timesformer as tf

    tmp = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    try:
        write_test_video(tmp / "v.mp4", seconds=6, width=320, height=240)
        print(f"machine: {machine()}; {os.cpu_count()} cores; torch {__import__('torch').__version__}\n")
        print("| model | processes | workers each | videos | wall s | videos/s (wall) | steady videos/s | vs 1x0 |")
        print("|---|---|---|---|---|---|---|---|")
        rates = {}
        for name, n, shard in (("timesformer_tiny", args.videos, 2), ("timesformer_base", args.base_videos, 1)):
            (tmp / name).mkdir()
            for i in range(n):
                shutil.copy(tmp / "v.mp4", tmp / name / f"v{i:04d}.mp4")
            listing = tmp / f"{name}.txt"
            listing.write_text("".join(f"{name}/v{i:04d}.mp4\n" for i in range(n)))
            ckpt = tmp / f"{name}_ckpt"
            tf.save_pretrained(tf.create_model(name, num_classes=400), ckpt)
            base = None
            for procs, workers in ((1, 0), (1, 2), (2, 0), (2, 2)):
                out = tmp / f"out_{name}_{procs}_{workers}"
                r = run_extract(ckpt, listing, out, procs, workers, shard, args.precision)
                base = base or r["steady"]  # nan when a run wrote too few shards to have a steady window
                rates[(name, procs, workers)] = r
                print(
                    f"| {name} {args.precision} | {procs} | {workers} | {n} | {r['wall']:.1f} | "
                    f"{r['videos_per_s']:.2f} | {r['steady']:.2f} | {r['steady'] / base:.2f}x |",
                    flush=True,
                )
        (_, procs, workers), r = max(
            ((k, v) for k, v in rates.items() if k[0] == "timesformer_base"), key=lambda kv: kv[1]["steady"]
        )
        per_core = max(v["steady"] for k, v in rates.items() if k[0] == "timesformer_tiny") / os.cpu_count()
        print(
            f"\nEstimate for 1M videos (1 clip x 1 crop each, base 8x224, {args.precision}), from the rates above:\n"
            f"- on CPUs like this one: {r['steady']:.2f} videos/s per {os.cpu_count()}-core machine at best ({procs} "
            f"process(es), "
            f"{workers} workers each), so {1e6 / r['steady'] / 86400:.1f} days on one, "
            f"{1e6 / r['steady'] / 86400:.1f}/N days on N (shards are independent: rates add across machines);\n"
            f"- decoding alone (the tiny model's best rate, where the model costs next to nothing) takes "
            f"{1 / per_core * 1000:.0f} ms of one core per video, {1e6 / per_core / 3600:.1f} core-hours per 1M "
            f"videos: a GPU that runs base at R clips/s needs about R / {per_core:.1f} cores decoding to stay fed;\n"
            f"- on N GPUs: 1e6 / (N x min(R, {per_core:.1f} x cores per GPU)) s. No GPU figure: no GPU was lent to "
            f"this run, so R is unmeasured."
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
