"""Samplers and transforms: exact times and pixels."""

import pytest
import torch

from timesformer.data import (
    ClipAugment,
    EvalTransform,
    TrainTransform,
    clip_start_times,
    dense_clip_times,
    segment_times,
    three_crop,
)


def test_dense_test_clips_follow_the_protocol():
    # 8 x 4 at 30 fps spans 32 frames (1.0667 s); a 10 s video; 3 test clips at the centres of 3 start ranges
    times = [
        dense_clip_times(10.0, num_frames=8, sampling_rate=4, train=False, clip_index=k, num_clips=3) for k in range(3)
    ]
    room = 10.0 - 32 / 30
    for k, t in enumerate(times):
        start = room * (k + 0.5) / 3
        offsets = torch.linspace(0, 31, 8).floor() / 30  # official linspace over the clip, truncated
        torch.testing.assert_close(t, start + offsets.double())
    steps = (times[0][1:] - times[0][:-1]) * 30  # floor(linspace(0, 31, 8)) = 0 4 8 13 17 22 26 31
    assert steps.round().tolist() == [4, 4, 5, 4, 5, 4, 5]


def test_dense_train_clips_are_random_but_reproducible():
    a = dense_clip_times(10.0, num_frames=8, sampling_rate=8, train=True, generator=torch.Generator().manual_seed(1))
    b = dense_clip_times(10.0, num_frames=8, sampling_rate=8, train=True, generator=torch.Generator().manual_seed(1))
    c = dense_clip_times(10.0, num_frames=8, sampling_rate=8, train=True, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a[0] >= 0 and a[-1] <= 10.0


def test_short_video_clip_starts_at_zero():
    t = dense_clip_times(1.0, num_frames=8, sampling_rate=32, train=True)
    assert t[0] == 0 and t[-1] > 1.0  # the reader repeats the last frame and masks these times


def test_segment_sampling():
    mid = segment_times(8.0, num_segments=4, train=False)
    assert mid.tolist() == [1.0, 3.0, 5.0, 7.0]
    rnd = segment_times(8.0, num_segments=4, train=True, generator=torch.Generator().manual_seed(0))
    assert all(2 * k <= s < 2 * (k + 1) for k, s in enumerate(rnd.tolist()))


def test_sliding_windows_cover_the_video():
    starts = clip_start_times(10.0, window=4.0, stride=3.0)
    assert starts.tolist() == [0.0, 3.0, 6.0]
    assert clip_start_times(10.5, window=4.0, stride=3.0).tolist() == [0.0, 3.0, 6.0, 6.5]
    assert clip_start_times(2.0, window=4.0, stride=1.0).tolist() == [0.0]


def test_three_crop_positions_and_eval_views():
    video = torch.arange(4 * 60, dtype=torch.uint8).view(1, 1, 4, 60).expand(2, 3, 4, 60)
    crops = three_crop(video, 4)
    assert [int(c[0, 0, 0, 0]) for c in crops] == [0, 28, 56]  # left, centre, right
    portrait = video.transpose(-1, -2)
    assert [int(c[0, 0, 0, 0]) for c in three_crop(portrait, 4)] == [0, 28, 56]  # top, centre, bottom
    views = EvalTransform(crop_size=4, short_side=4, num_crops=3, mean=(0,) * 3, std=(1,) * 3)(video)
    assert len(views) == 3 and views[2].shape == (2, 3, 4, 4)
    torch.testing.assert_close(views[1] * 255, crops[1].float())


def test_train_transform_shape_flip_and_normalisation():
    video = torch.zeros(4, 3, 40, 60, dtype=torch.uint8)
    video[..., :30] = 255  # left half white
    tf = TrainTransform(crop_size=32, scale=(40, 40), augment=ClipAugment(flip=True), mean=(0.5,) * 3, std=(0.5,) * 3)
    outs = [tf(video, torch.Generator().manual_seed(s)) for s in range(12)]
    assert all(o.shape == (4, 3, 32, 32) for o in outs)
    assert all(-1.0 - 1e-5 <= float(o.min()) and float(o.max()) <= 1.0 + 1e-5 for o in outs)
    left_bright = {bool(o[0, 0, 16, 0] > 0) for o in outs}
    assert left_bright == {True, False}  # both flipped and unflipped occur
    no_flip = TrainTransform(crop_size=32, scale=(40, 40), mean=(0.5,) * 3, std=(0.5,) * 3)
    assert all(bool(no_flip(video, torch.Generator().manual_seed(s))[0, 0, 16, 0] > 0) for s in range(12))


def test_train_transform_rejects_bad_scale():
    with pytest.raises(ValueError, match=r"crop_size 224 <= min <= max; got \(200, 320\)"):
        TrainTransform(crop_size=224, scale=(200, 320))
