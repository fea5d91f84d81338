"""Clip decoding throughput: dense and segment sampling against a decode-everything baseline, and the
DataLoader with 0 and 2 workers.

The input is a 10 s, 568x320, 30 fps H.264 video (libx264 defaults with B-frames, a keyframe every 2 s as web
video has), written by this script. Prints a markdown table; ratios are against the baseline, which decodes
and converts every frame and then picks the clip's frames (what naive loaders do).

    python benchmarks/bench_data.py [--threads 2] [--reps 6]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from timing import median_seconds


def write_test_video(path: Path, seconds: int = 10, fps: int = 30, width: int = 568, height: int = 320):
    import av

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = 2 * fps
        for i in range(seconds * fps):
            t = i / fps
            img = np.stack([(xx + 40 * t) % 256, (yy + 25 * t) % 256, (xx + yy) // 4 % 256], -1).astype(np.float32)
            cx, cy = width / 2 + width / 3 * np.sin(t), height / 2 + height / 3 * np.cos(1.3 * t)
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < 50**2] = (250, 240, 40)
            img += rng.normal(0, 6, img.shape)
            frame = av.VideoFrame.from_ndarray(img.clip(0, 255).astype(np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def clips_per_s(fn, reps: int) -> float:
    return 1.0 / median_seconds(fn, reps)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from torch.utils.data import DataLoader

    from timesformer.data import ClipSpec, VideoFolder, VideoReader, collate
    from timesformer.data.decode import decode_all

    tmp = Path(tempfile.mkdtemp(prefix="bench_data_"))
    (tmp / "cls").mkdir()
    video = tmp / "cls" / "clip.mp4"
    write_test_video(video)
    for k in range(1, 8):  # a small folder for the DataLoader
        (tmp / "cls" / f"clip{k}.mp4").symlink_to(video)
    with VideoReader(video) as r:
        duration, total = r.duration, r.num_frames

    g = torch.Generator().manual_seed(0)
    rows = []

    def reader_case(name, spec):
        decoded = []

        def run():
            with VideoReader(video) as r:
                r.frames_at(spec.times(duration, train=True, generator=g))
                decoded.append(r.frames_decoded)

        rate = clips_per_s(run, args.reps)
        rows.append((name, rate, statistics.median(decoded)))

    def baseline():
        frames, stamps = decode_all(video)
        times = ClipSpec(num_frames=8, sampling_rate=8).times(duration, train=True, generator=g)
        idx = [min(int(s * 30), len(stamps) - 1) for s in times.tolist()]
        return frames[idx]

    rows.append(("baseline: decode and convert every frame, then pick 8", clips_per_s(baseline, args.reps), total))
    reader_case("dense 8x8 (8 frames every 8th, 2.1 s span)", ClipSpec(num_frames=8, sampling_rate=8))
    reader_case("dense 8x32 (official Kinetics: 8.5 s span)", ClipSpec(num_frames=8, sampling_rate=32))
    reader_case("segment 8 (TSN: one frame per 1.25 s segment)", ClipSpec(num_frames=8, sampling="segment"))

    spec = ClipSpec(num_frames=8, sampling_rate=8, crop_size=224, scale=(256, 320))
    data = VideoFolder(tmp, spec=spec, train=True)
    loader_rates = {}
    for workers in (0, 2):
        loader = DataLoader(data, batch_size=4, num_workers=workers, collate_fn=collate, persistent_workers=workers > 0)
        next(iter(loader))  # start workers
        start = time.perf_counter()
        n = 0
        for _ in range(2):
            for batch in loader:
                n += len(batch["label"])
        loader_rates[workers] = n / (time.perf_counter() - start)

    base = rows[0][1]
    print(
        f"\n10 s 568x320 30 fps H.264 (GOP 60, B-frames), {total} frames; torch threads {args.threads}; "
        f"median of {args.reps}\n"
    )
    print("| sampling | clips/s | frames decoded per clip | vs baseline |")
    print("|---|---|---|---|")
    for name, rate, dec in rows:
        print(f"| {name} | {rate:.2f} | {dec:.0f} | {rate / base:.2f}x |")
    print("\n| DataLoader (VideoFolder, dense 8x8, train transforms to 224, batch 4) | clips/s |")
    print("|---|---|")
    for workers, rate in loader_rates.items():
        print(f"| {workers} workers | {rate:.2f} |")


if __name__ == "__main__":
    main()
