"""Decode throughput per core at the resolutions people have, and what ``timesformer prepare`` buys.

One training clip (8 frames every 32nd, as K400; decode, scale jitter, 224 crop) and one ``predict`` view (8
frames over the video, short side 224, centre crop) from test videos this script writes with PyAV: H.264 at 480p,
720p and 1080p with a keyframe every 250 and every 16 frames, HEVC 1080p, VP9 240p ``.webm`` (as SSv2), 10 s each.
Contestants, in rounds A B C in one process on one thread: ours (the dataset's own path); ours on the same video
after ``timesformer prepare`` (short side 320, a keyframe every 16 frames); decord's ``get_batch`` (the clip's
frames at the same indices, then the same resize and crop); torchcodec (CPU) where it imports. A decoder that is not
installed is a skipped row, saying why; the script installs nothing.

    python benchmarks/bench_decode.py [--rounds 3] [--model-rate 100]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from timing import interleaved, machine

VIDEOS = {  # name -> (codec, width, height, gop, container suffix)
    "480p h264 gop250": ("libx264", 854, 480, 250, ".mp4"),
    "720p h264 gop250": ("libx264", 1280, 720, 250, ".mp4"),
    "1080p h264 gop250": ("libx264", 1920, 1080, 250, ".mp4"),
    "1080p h264 gop16": ("libx264", 1920, 1080, 16, ".mp4"),
    "1080p hevc gop250": ("libx265", 1920, 1080, 250, ".mp4"),
    "240p vp9 (SSv2)": ("libvpx-vp9", 427, 240, 250, ".webm"),
}
SECONDS, FPS = 10, 30


def write_video(path: Path, codec: str, width: int, height: int, gop: int):
    """Moving texture and a moving disc with sensor noise: content a codec has to work for."""
    import av

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {"preset": "veryfast"} if codec in ("libx264", "libx265") else {"deadline": "realtime"}
        for i in range(SECONDS * FPS):
            t = i / FPS
            img = np.stack([(xx + 40 * t) % 256, (yy + 25 * t) % 256, (xx + yy) / 4 % 256], -1)
            cx, cy = width / 2 + width / 3 * np.sin(t), height / 2 + height / 3 * np.cos(1.3 * t)
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < (height / 8) ** 2] = (250, 240, 40)
            img += rng.normal(0, 6, img.shape).astype(np.float32)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img.clip(0, 255).astype(np.uint8), format="rgb24")))
        container.mux(stream.encode())


def ours(path: Path, train: bool):
    from timesformer.data import ClipSpec, VideoDataset

    spec = ClipSpec(num_frames=8, sampling="dense", sampling_rate=32, fps=FPS, crop_size=224)
    data = VideoDataset([(path, 0)], ["a"], spec=spec, train=train, seed=0)
    calls = iter(range(10**9))

    def clip():
        data.set_epoch(next(calls))  # another random clip each call, as epochs draw
        assert "error" not in data[0]

    return clip


def decord_clip(path: Path):
    import decord

    from timesformer.data.augment import TrainTransform

    transform, rng = TrainTransform(crop_size=224, scale=(256, 320)), np.random.default_rng(0)

    def clip():
        reader = decord.VideoReader(str(path), num_threads=1)
        start = int(rng.integers(0, max(len(reader) - 8 * 32, 1)))
        frames = reader.get_batch(list(range(start, start + 8 * 32, 32))).asnumpy()  # t H W c
        transform(torch.from_numpy(frames).permute(0, 3, 1, 2), torch.Generator().manual_seed(start))

    return clip


def torchcodec_clip(path: Path):
    from torchcodec.decoders import VideoDecoder

    from timesformer.data.augment import TrainTransform

    transform, rng = TrainTransform(crop_size=224, scale=(256, 320)), np.random.default_rng(0)

    def clip():
        decoder = VideoDecoder(str(path), num_ffmpeg_threads=1)
        start = int(rng.integers(0, max(len(decoder) - 8 * 32, 1)))
        frames = decoder.get_frames_at(list(range(start, start + 8 * 32, 32))).data  # t c H W uint8
        transform(frames, torch.Generator().manual_seed(start))

    return clip


def peer(name: str, factory, path: Path):
    try:
        return factory(path), None
    except ImportError as err:
        return None, f"{name} does not import ({str(err).splitlines()[0][:80]})"
    except Exception as err:  # torchcodec without FFmpeg's shared libraries fails here, not at import
        return None, f"{name}: {type(err).__name__}: {str(err).splitlines()[0][:120]}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model-rate", type=float, default=100.0, help="clips/s a GPU trains at (for cores needed)")
    ap.add_argument("--videos", help="comma list of VIDEOS names (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from timesformer.data.prepare import Settings, prepare_file

    tmp = Path(tempfile.mkdtemp(prefix="bench_decode_"))
    names = args.videos.split(",") if args.videos else list(VIDEOS)
    print(f"machine: {machine()}; 1 thread; {args.rounds} rounds; {SECONDS} s videos at {FPS} fps\n")
    print(
        "| video | MB | ours: train clips/s | prepared: train clips/s | prepared / ours | decord | torchcodec | "
        "ours: predict views/s | prepared MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    skipped = set()
    for name in names:
        codec, width, height, gop, suffix = VIDEOS[name]
        path = tmp / f"{name.split()[0]}-{codec}-{gop}{suffix}"
        try:
            write_video(path, codec, width, height, gop)
        except Exception as err:  # an encoder this PyAV lacks
            print(f"| {name} | skipped: can't encode ({type(err).__name__}: {str(err)[:80]}) |")
            continue
        prepared = tmp / f"{path.stem}-prepared.mp4"
        result = prepare_file(str(path), str(prepared), Settings())
        contestants = {"ours": ours(path, True), "view": ours(path, False)}
        if result["status"] != "bad":
            contestants["prepared"] = ours(prepared, True)
        for label, factory in (("decord", decord_clip), ("torchcodec", torchcodec_clip)):
            fn, why = peer(label, factory, path)
            if fn is None:
                skipped.add(why)
            else:
                contestants[label] = fn
        times = interleaved(contestants, args.rounds)
        rate = {k: 1 / statistics.median(v) for k, v in times.items()}
        ratio = rate["prepared"] / rate["ours"] if "prepared" in rate else float("nan")
        cells = [
            f"{path.stat().st_size / 1e6:.1f}",
            f"{rate['ours']:.2f}",
            f"{rate.get('prepared', float('nan')):.2f}",
            f"{ratio:.2f}x",
            f"{rate['decord']:.2f} ({rate['ours'] / rate['decord']:.2f}x ours)" if "decord" in rate else "skipped",
            f"{rate['torchcodec']:.2f}" if "torchcodec" in rate else "skipped",
            f"{rate['view']:.2f}",
            f"{prepared.stat().st_size / 1e6:.1f}" if prepared.exists() else "-",
        ]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    for why in sorted(skipped):
        print(f"\nskipped: {why}")
    print(f"\ncores to feed a model at {args.model_rate:g} clips/s: model rate / clips/s per core, per row above")


if __name__ == "__main__":
    main()
