"""Other frame counts and resolutions: every layer reads T and the grid from the input."""

import pytest
import torch

import timesformer as tf
from timesformer.model.embeddings import resample_pos_embed, resample_time_embed

from ..conftest import SCHEMES, small_model


def resized_twin(model: tf.TimeSformer, frames: int, size: int) -> tf.TimeSformer:
    """A model configured for ``frames x size`` holding the same, identically resized weights."""
    cfg = model.config.replace(num_frames=frames, image_size=size)
    twin = tf.TimeSformer(cfg).eval()
    state = dict(model.state_dict())
    grid = size // cfg.patch_size
    state["pos_embed"] = resample_pos_embed(state["pos_embed"], (grid, grid))
    if "time_embed" in state:
        state["time_embed"] = resample_time_embed(state["time_embed"], frames)
    twin.load_state_dict(state)
    return twin


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("frames,size", [(8, 32), (4, 48), (6, 24), (7, 40)])
def test_other_size_equals_model_configured_for_it(scheme, frames, size):
    model = small_model(attention=scheme)  # configured for 4 x 32
    twin = resized_twin(model, frames, size)
    video = torch.randn(2, frames, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(model(video), twin(video), atol=1e-5, rtol=1e-5)


def test_non_square_input():
    model = small_model()
    with torch.no_grad():
        assert model(torch.randn(1, 4, 3, 32, 48)).shape == (1, 5)


def test_embeddings_resize_like_hugging_face():
    """HF's embedding layer interpolates (nearest) correctly; only its layers break at other sizes. Our tokens
    at 48x48 and 6 frames equal HF's embedding output there."""
    from transformers import TimesformerConfig, TimesformerModel

    from timesformer.convert.hf import from_hf

    hc = TimesformerConfig(
        image_size=32,
        patch_size=8,
        num_frames=4,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=128,
    )
    hf = TimesformerModel(hc).eval()
    torch.nn.init.normal_(hf.embeddings.time_embeddings)
    ours = small_model(depth=1, num_classes=0)
    state = {k: v for k, v in from_hf(hf.state_dict()).items()}
    ours.load_state_dict({k: state[k] for k in ours.state_dict()})
    video = torch.randn(2, 6, 3, 48, 48)
    with torch.no_grad():
        theirs = hf.embeddings(video)  # b (1 + n t) d, space-major
        cls, x, _ = ours.embed(video)
    b, t, h, w, d = x.shape
    torch.testing.assert_close(cls[:, 0], theirs[:, 0])
    torch.testing.assert_close(x.permute(0, 2, 3, 1, 4).reshape(b, h * w * t, d), theirs[:, 1:])


def test_rotary_needs_no_resizing():
    model = small_model(pos_emb="rotary")
    assert not any("embed" in k and "patch" not in k for k in model.state_dict())
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 16, 3, 64, 64))).all()
