"""Training augmentation throughput: the fine-tuning recipe (RandAugment n2 m9, RandomErasing 0.25, MixUp/CutMix)
in the loader, per clip, against the same on the training device, per batch (``data.augment_on``); and the
jitter-and-crop alone, Kornia's ``crop_and_resize`` against the hand-written resize-then-crop it replaced.

Each contestant makes one training batch of 8-frame 224 clips from a 10 s 568x320 H.264 video (bench_data's),
decoding included, in rounds A B C D in one process. Prints a markdown table of clips/s with min / median /
spread of the per-round ratios.

    python benchmarks/bench_augment.py [--threads 2] [--rounds 8] [--batch 8]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_data import write_test_video
from timing import interleaved, machine, ratio_stats

RECIPE = dict(randaugment_n=2, randaugment_m=9, erase_prob=0.25)


def handwritten_jitter_crop(video: torch.Tensor, generator, crop: int = 224, scale=(256, 320)) -> torch.Tensor:
    """The training transform before Kornia: antialiased resize of the whole clip to a random short side, then a
    random crop (the reference this benchmark compares the crop_and_resize against)."""
    from timesformer.data.transforms import short_side_size

    short = int(torch.randint(scale[0], scale[1] + 1, (1,), generator=generator))
    size = short_side_size(*video.shape[-2:], short)
    video = F.interpolate(video.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    top = int(torch.randint(0, size[0] - crop + 1, (1,), generator=generator))
    left = int(torch.randint(0, size[1] - crop + 1, (1,), generator=generator))
    return video[..., top : top + crop, left : left + crop] / 255.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from timesformer.data import BatchMix, ClipAugment, ClipSpec, TrainTransform, VideoDataset, collate, soft_targets

    tmp = Path(tempfile.mkdtemp(prefix="bench_augment_"))
    write_test_video(tmp / "v.mp4")
    items = [(tmp / "v.mp4", 0)] * args.batch
    base = ClipSpec(num_frames=8, sampling="segment", crop_size=224)
    in_loader = VideoDataset(items, ["a"], spec=ClipSpec(**{**vars(base), **RECIPE}), seed=0)
    plain = VideoDataset(items, ["a"], spec=base, seed=0)
    mix = BatchMix(1.0, 0.5)
    augment = ClipAugment(flip=True, **RECIPE)
    batches = iter(range(10**9))

    def loader_batch():
        batch = collate([in_loader[i] for i in range(args.batch)])
        mix(batch["video"], soft_targets(batch["label"], 1), next(batches))

    def device_batch():
        batch = collate([plain[i] for i in range(args.batch)])
        video = augment.normalized(batch["video"], next(batches), base.mean, base.std)
        mix(video, soft_targets(batch["label"], 1), next(batches))

    with plain.spec.open(tmp / "v.mp4", train=True) as reader:  # the frames the jitter starts from
        frames, _ = reader.frames_at(base.times(reader.duration, train=True))
    kornia_tf = TrainTransform(crop_size=224, scale=(256, 320))

    def kornia_crop():
        for i in range(args.batch):
            kornia_tf(frames, torch.Generator().manual_seed(i))

    def handwritten_crop():
        for i in range(args.batch):
            handwritten_jitter_crop(frames, torch.Generator().manual_seed(i))

    contestants = {
        "recipe in the loader (per clip)": loader_batch,
        "recipe on the device (per batch)": device_batch,
        "jitter + crop: Kornia crop_and_resize": kornia_crop,
        "jitter + crop: hand-written resize, crop": handwritten_crop,
    }
    times = interleaved(contestants, args.rounds)
    print(f"machine: {machine()}; torch threads {args.threads}; batch {args.batch} x 8 x 224; {args.rounds} rounds\n")
    print("| contestant | clips/s (median) | vs reference: min / median / spread |")
    print("|---|---|---|")
    pairs = {
        "recipe in the loader (per clip)": "recipe on the device (per batch)",
        "jitter + crop: Kornia crop_and_resize": "jitter + crop: hand-written resize, crop",
    }
    for name, secs in times.items():
        rate = args.batch / statistics.median(secs)
        ref = pairs.get(name)
        text = "reference"
        if ref is not None:
            r = ratio_stats(times[ref], secs)  # > 1: this one is faster
            text = f"{r['min']:.2f}x / {r['median']:.2f}x / {r['spread']:.2f} (vs {ref})"
        print(f"| {name} | {rate:.1f} | {text} |")


if __name__ == "__main__":
    main()
