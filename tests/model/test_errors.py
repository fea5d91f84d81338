"""Bad input raises ValueError naming what was expected and what came."""

import pytest
import torch

import timesformer as tf

from ..conftest import small_config, small_model


@pytest.mark.parametrize(
    "video,match",
    [
        (torch.randn(4, 3, 32, 32), r"5-D tensor b t c H W; got \(4, 3, 32, 32\)"),
        (torch.randn(1, 4, 1, 32, 32), r"c = 3 channels; got \(1, 4, 1, 32, 32\)"),
        (torch.randn(1, 4, 3, 30, 32), r"divisible by patch size 8; got \(1, 4, 3, 30, 32\)"),
        (torch.zeros(1, 4, 3, 32, 32, dtype=torch.uint8), "float tensor"),
    ],
)
def test_bad_video(video, match):
    with pytest.raises(ValueError, match=match):
        small_model()(video)


@pytest.mark.parametrize(
    "mask,match",
    [
        (torch.ones(2, 3, dtype=torch.bool), r"mask must be b t = \(2, 4\).*got \(2, 3\)"),
        (torch.ones(2, 4, 1, dtype=torch.bool), r"got \(2, 4, 1\)"),
        (torch.ones(2, 4), "must be bool"),
        (torch.tensor([[True] * 4, [False] * 4]), r"no real frame in row\(s\) \[1\]"),
    ],
)
def test_bad_mask(mask, match):
    with pytest.raises(ValueError, match=match):
        small_model()(torch.randn(2, 4, 3, 32, 32), mask)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(attention="local"), r"attention must be one of .*divided.*got 'local'"),
        (dict(pos_emb="sinusoidal"), "pos_emb must be one of"),
        (dict(image_size=30), "image_size 30 must be divisible by patch_size 8"),
        (dict(heads=0), "heads must be a positive int; got 0"),
        (dict(dim_head=15, pos_emb="rotary"), "even dim_head; got 15"),
        (dict(labels=("a", "b")), "labels has 2 names but num_classes is 5"),
        (dict(attn_impl="flash"), "attn_impl must be one of"),
    ],
)
def test_bad_config(overrides, match):
    with pytest.raises(ValueError, match=match):
        small_config(**overrides)


def test_unknown_preset_and_override():
    with pytest.raises(ValueError, match=r"unknown model 'timesformer_xl'; expected one of \[.*timesformer_base"):
        tf.create_model("timesformer_xl")
    with pytest.raises(ValueError, match=r"unknown TimeSformerConfig field\(s\) \['layers'\]"):
        tf.create_model("timesformer_tiny", layers=3)
