"""Training augmentation on Kornia: one draw per clip for all of its frames, seeded (and the global RNG left
alone), the official scale jitter as a crop of the decoded frames, and MixUp/CutMix whose targets mix exactly as
the pixels do."""

import pytest
import torch

from timesformer.data import BatchMix, ClipAugment, TrainTransform, soft_targets

RECIPE = dict(flip=True, randaugment_n=2, randaugment_m=9, erase_prob=0.5)


def still_clip(t=6, size=40, seed=0):
    """A clip whose frames are all one random image (uint8 t c H W)."""
    frame = torch.randint(
        0, 256, (3, size, size + 12), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
    )
    return frame.expand(t, 3, size, size + 12).contiguous()


def test_every_frame_of_a_clip_gets_the_same_draw_and_the_seed_decides_it():
    tf = TrainTransform(crop_size=32, scale=(40, 48), augment=ClipAugment(**RECIPE))
    outs = [tf(still_clip(), torch.Generator().manual_seed(s)) for s in range(16)]
    for out in outs:
        assert out.shape == (6, 3, 32, 32)
        assert torch.equal(out, out[:1].expand_as(out))  # the same draw on every frame
    assert len({round(float(o.sum()), 2) for o in outs}) == 16  # and another draw on every clip
    again = tf(still_clip(), torch.Generator().manual_seed(3))
    assert torch.equal(again, outs[3])


def test_augmenting_leaves_the_global_rng_alone(monkeypatch):
    """Neither the CPU generator nor the CUDA ones (dropout's on a GPU: torch.manual_seed would reseed them)."""
    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    clips, small = torch.rand(2, 4, 3, 32, 32), torch.rand(4, 2, 3, 8, 8)
    state = torch.get_rng_state()
    ClipAugment(**RECIPE)(clips, seed=5)
    BatchMix(1.0)(small, soft_targets(torch.arange(4), 4), seed=5)
    assert torch.equal(torch.get_rng_state(), state) and reseeded == []


def test_randaugment_magnitude_is_on_the_recipes_scale_of_10():
    """PySlowFast's and timm's m 9 is 9/10 of the strongest; Kornia counts to 30."""
    assert ClipAugment(randaugment_n=2, randaugment_m=9).sequence[0].m == 27


def test_per_batch_augmentation_draws_per_clip_on_normalised_clips():
    """On the device (augment_on: device): each clip of the batch its own draw, every frame of it the same one."""
    clips = torch.stack([still_clip(4, 32, seed).float() for seed in range(3)]) / 255  # b t c H W in [0, 1]
    mean, std = (0.45,) * 3, (0.225,) * 3
    norm = (clips - 0.45) / 0.225
    out = ClipAugment(**RECIPE).normalized(norm, 11, mean, std)
    assert out.shape == norm.shape and torch.equal(out, out[:, :1].expand_as(out))
    plain = ClipAugment(flip=False).normalized(norm, 11, mean, std)
    torch.testing.assert_close(plain, norm)  # nothing asked for: the clips as they came (to rounding)


def test_scale_jitter_crops_what_resizing_then_cropping_would():
    """A frame whose columns count 0, 1, 2, ...: the crop's first column is the box's left edge in frame pixels,
    and a crop from a short side jittered to s covers crop x (H / s) frame pixels."""
    h, w = 40, 100
    video = torch.arange(w, dtype=torch.float32).expand(2, 3, h, w).contiguous()
    tf = TrainTransform(crop_size=20, scale=(20, 40), mean=(0,) * 3, std=(1 / 255,) * 3)
    for seed in range(8):
        top, left, side = tf.box(h, w, torch.Generator().manual_seed(seed))
        out = tf(video.to(torch.uint8), torch.Generator().manual_seed(seed))
        assert 20 <= side <= 40 and 0 <= left <= w - side and 0 <= top <= h - side
        assert float(out[0, 0, 0, 0]) == pytest.approx(left, abs=0.01)
        assert float(out[0, 0, 0, -1]) == pytest.approx(left + side - 1, abs=0.01)


@pytest.mark.parametrize("cutmix_share", [0.0, 1.0], ids=["mixup", "cutmix"])
def test_mixed_targets_weigh_classes_as_the_pixels_do(cutmix_share):
    """Clip i is all i/10 and of class i: after mixing, each clip's mean value is its targets' expectation."""
    b = 6
    video = (torch.arange(b, dtype=torch.float32) / 10).view(b, 1, 1, 1, 1).expand(b, 4, 3, 16, 16).contiguous()
    mix = BatchMix(1.0, cutmix_share)
    for seed in range(5):
        mixed, targets = mix(video, soft_targets(torch.arange(b), b), seed)
        torch.testing.assert_close(targets.sum(1), torch.ones(b))
        expected = targets @ (torch.arange(b, dtype=torch.float32) / 10)
        torch.testing.assert_close(mixed.mean((1, 2, 3, 4)), expected, atol=1e-5, rtol=0)
        first = mixed[:, 0]
        assert torch.equal(mixed, first[:, None].expand_as(mixed))  # one mix for the whole clip
    assert not torch.equal(mixed, video)


def test_multi_label_targets_mix_as_multi_hot_vectors():
    hot = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 0]], dtype=torch.float32)
    _, targets = BatchMix(1.0, 0.0)(torch.rand(4, 2, 3, 8, 8), soft_targets(hot, 3), seed=2)
    assert targets.shape == (4, 3) and bool(((targets >= 0) & (targets <= 1)).all())
    assert not torch.equal(targets, hot)


def test_no_mix_below_its_probability_and_smoothing_as_cross_entropy_does():
    video, targets = torch.rand(4, 2, 3, 8, 8), soft_targets(torch.tensor([0, 1, 2, 0]), 3, smoothing=0.1)
    out, same = BatchMix(0.0)(video, targets, seed=1)
    assert out is video and same is targets
    logits = torch.randn(4, 3)
    torch.testing.assert_close(
        torch.nn.functional.cross_entropy(logits, targets),
        torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0]), label_smoothing=0.1),
    )


def test_bad_settings_name_themselves():
    with pytest.raises(ValueError, match=r"erase_prob in \[0, 1\]; got 2, 9, 1.5"):
        ClipAugment(randaugment_n=2, erase_prob=1.5)
    with pytest.raises(ValueError, match=r"randaugment_m in \(0, 10\)"):
        ClipAugment(randaugment_n=2, randaugment_m=10)
    with pytest.raises(ValueError, match=r"mixup and cutmix_share must be in \[0, 1\]; got 1.2, 0.5"):
        BatchMix(1.2)
