"""Decode throughput per core at the resolutions people have, and what ``timesformer prepare`` buys.

One training clip (8 frames every 32nd, as K400; decode, scale jitter, 224 crop) and one ``predict`` view (8
frames over the video, short side 224, centre crop) from test videos this script writes with PyAV: H.264 at 480p,
720p and 1080p with a keyframe every 250 and every 16 frames, HEVC 1080p, VP9 240p ``.webm`` (as SSv2), 10 s each.
Contestants, in rounds A B C in one process on one thread: ours (the dataset's own path, PyAV); ours on the same
video after ``timesformer prepare`` (short side 320, a keyframe every 16 frames); ours with ``data.decoder:
torchcodec``; decord's ``get_batch`` and torchcodec's ``get_frames_at`` (the clip's frames at the same indices,
then our resize and crop). A decoder that is not installed (torchcodec also needs FFmpeg's shared libraries: apt-get
install ffmpeg) is a skipped cell, saying why; the script installs nothing.

    taskset -c 0 python benchmarks/bench_decode.py [--rounds 3] [--model-rate 100]

Per core: under ``taskset -c 0`` our reader's FFmpeg threads follow the cores it may use (one), as decord's and
torchcodec's are set to one. GPU decoding (NVDEC, torchcodec on CUDA) is not in this script: not measured.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from timing import interleaved, machine, ratio_stats

VIDEOS = {  # name -> (codec, width, height, gop, container suffix)
    "480p h264 gop250": ("libx264", 854, 480, 250, ".mp4"),
    "480p h264 gop16": ("libx264", 854, 480, 16, ".mp4"),
    "720p h264 gop250": ("libx264", 1280, 720, 250, ".mp4"),
    "720p h264 gop16": ("libx264", 1280, 720, 16, ".mp4"),
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


def spec(decoder: str = "pyav"):
    from timesformer.data import ClipSpec

    return ClipSpec(num_frames=8, sampling="dense", sampling_rate=32, fps=FPS, crop_size=224, decoder=decoder)


def ours(path: Path, train: bool, decoder: str = "pyav"):
    """The dataset's own path: a training clip (another random one each call, as epochs draw) or the test view."""
    from timesformer.data import VideoDataset

    data = VideoDataset([(path, 0)], ["a"], spec=spec(decoder), train=train, seed=0)
    calls = iter(range(10**9))

    def clip():
        data.set_epoch(next(calls))
        assert "error" not in data[0], data[0]

    return clip


def peer_clip(path: Path, train: bool, open_reader, frames_at):
    """A peer decoder's clip at the indices ours samples: a training clip through our ``TrainTransform`` (jitter and
    crop), or the test view (short side 224, centre crop, normalised) as ``predict`` makes it."""
    from timesformer.data import EvalTransform
    from timesformer.data.augment import TrainTransform

    rng = np.random.default_rng(0)
    transform = TrainTransform(crop_size=224, scale=(256, 320)) if train else EvalTransform(crop_size=224)

    def clip():
        reader = open_reader(str(path))
        count = len(reader)
        if train:
            start = int(rng.integers(0, max(count - 8 * 32, 1)))
            frames = frames_at(reader, [min(i, count - 1) for i in range(start, start + 8 * 32, 32)])
            transform(frames, torch.Generator().manual_seed(start))
        else:
            times = spec().times(count / FPS, train=False)
            transform(frames_at(reader, [min(round(float(t) * FPS), count - 1) for t in times]))

    return clip


def decord_clip(path: Path, train: bool):
    import decord

    return peer_clip(
        path,
        train,
        lambda p: decord.VideoReader(p, num_threads=1),
        lambda r, idx: torch.from_numpy(r.get_batch(idx).asnumpy()).permute(0, 3, 1, 2),  # t H W c -> t c H W
    )


def torchcodec_clip(path: Path, train: bool):
    from torchcodec.decoders import VideoDecoder

    return peer_clip(
        path, train, lambda p: VideoDecoder(p, num_ffmpeg_threads=1), lambda r, idx: r.get_frames_at(idx).data
    )


def peer(name: str, factory, path: Path, train: bool):
    try:
        fn = factory(path, train)
        fn()  # a peer that can't decode here (torchcodec without FFmpeg's libraries) fails now, not mid-round
        return fn, None
    except ImportError as err:
        return None, f"{name} does not import ({str(err).splitlines()[0][:80]})"
    except Exception as err:
        return None, f"{name}: {type(err).__name__}: {str(err).splitlines()[0][:120]}"


def contestants_for(path: Path, prepared: Path | None, skipped: set) -> dict:
    """name -> callable: ours (train, view), prepared (train), ours through torchcodec, and the peers."""
    out = {"ours": ours(path, True), "ours view": ours(path, False)}
    if prepared is not None:
        out["prepared"] = ours(prepared, True)
    peers = {
        "ours+torchcodec": ("data.decoder: torchcodec", lambda p, train: ours(p, train, "torchcodec")),
        "decord": ("decord", decord_clip),
        "torchcodec": ("torchcodec", torchcodec_clip),
    }
    for label, (name, factory) in peers.items():
        for key, train in ((label, True), (f"{label} view", False)):
            fn, why = peer(name, factory, path, train)
            if fn is not None:
                out[key] = fn
            else:
                skipped.add(why)
    return out


def cell(rate: dict, times: dict, name: str, base: str) -> str:
    """``rate (ratio to base: median, min-max over the rounds)``, or skipped."""
    if name not in rate:
        return "skipped"
    if name == base:
        return f"{rate[name]:.2f}"
    r = ratio_stats(times[base], times[name])  # seconds of base / seconds of name: how many times faster
    return f"{rate[name]:.2f} ({r['median']:.2f}x, {r['min']:.2f}-{r['max']:.2f})"


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
    from timesformer.data.decode import _cores

    print(
        f"machine: {machine()}; torch 1 thread, our decoder {_cores()} core(s); {args.rounds} rounds; "
        f"{SECONDS} s videos at {FPS} fps"
    )
    print("cells: clips/s per core, median over rounds (ratio to ours per round: median, min-max)\n")
    train_rows, view_rows, skipped = [], [], set()
    for name in names:
        codec, width, height, gop, suffix = VIDEOS[name]
        path = tmp / f"{name.split()[0]}-{codec}-{gop}{suffix}"
        try:
            write_video(path, codec, width, height, gop)
        except Exception as err:  # an encoder this PyAV lacks
            skipped.add(f"{name}: can't encode ({type(err).__name__}: {str(err)[:80]})")
            continue
        prepared = tmp / f"{path.stem}-prepared.mp4"
        ok = prepare_file(str(path), str(prepared), Settings())["status"] != "bad"
        times = interleaved(contestants_for(path, prepared if ok else None, skipped), args.rounds)
        rate = {k: 1 / statistics.median(v) for k, v in times.items()}
        cores = f"{args.model_rate / rate['ours']:.0f}" + (
            f" / {args.model_rate / rate['prepared']:.0f}" if "prepared" in rate else ""
        )
        mb = f"{path.stat().st_size / 1e6:.1f}" + (f" / {prepared.stat().st_size / 1e6:.1f}" if ok else "")
        train = [cell(rate, times, k, "ours") for k in ("ours", "prepared", "ours+torchcodec", "decord", "torchcodec")]
        train_rows.append(f"| {name} | {mb} | " + " | ".join(train) + f" | {cores} |")
        view = [cell(rate, times, k, "ours view") for k in ("ours view", "ours+torchcodec view", "decord view")]
        view_rows.append(f"| {name} | " + " | ".join([*view, cell(rate, times, "torchcodec view", "ours view")]) + " |")
        print(train_rows[-1], flush=True)
    print(
        "\n**Training clip** (8 frames every 32nd, decode, scale jitter 256-320, 224 crop)\n\n"
        "| video | MB (source / prepared) | ours | prepared | ours, data.decoder: torchcodec | decord | "
        f"torchcodec | cores at {args.model_rate:g} clips/s (ours / prepared) |\n|---|---|---|---|---|---|---|---|"
    )
    print("\n".join(train_rows))
    print(
        "\n**Predict view** (the centre clip, short side 224, centre crop)\n\n"
        "| video | ours | ours, data.decoder: torchcodec | decord | torchcodec |\n|---|---|---|---|---|"
    )
    print("\n".join(view_rows))
    for why in sorted(skipped):
        print(f"\nskipped: {why}")
    print("\nGPU decoding (NVDEC): not measured (no GPU here)")


if __name__ == "__main__":
    main()
