"""The seed's timesformer-pytorch 0.4.1 models load into the `lucidrains` preset with equal logits."""

import pytest
import torch

import timesformer as tf

timesformer_pytorch = pytest.importorskip("timesformer_pytorch")


def seed_model(**kw):
    torch.manual_seed(0)
    base = dict(
        dim=64,
        image_size=32,
        patch_size=8,
        num_frames=5,
        num_classes=7,
        depth=2,
        heads=4,
        dim_head=16,
        rotary_emb=False,
    )
    return timesformer_pytorch.TimeSformer(**{**base, **kw}).eval()


@pytest.mark.parametrize("shift_tokens", [False, True])
def test_learned_table_seed_loads_exactly(tmp_path, shift_tokens):
    seed = seed_model(shift_tokens=shift_tokens)
    path = tmp_path / "seed.pt"
    torch.save(seed.state_dict(), path)
    ours = tf.load_pretrained(path, heads=4, num_frames=5, image_size=32)
    cfg = ours.config
    assert (cfg.mlp, cfg.qkv_bias, cfg.cls_attention, cfg.pos_emb, cfg.shift_tokens) == (
        "geglu",
        False,
        "global",
        "learned_joint",
        shift_tokens,
    )
    video = torch.randn(2, 5, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(video), seed(video), atol=1e-5, rtol=1e-5)


def test_seed_with_frame_masks(tmp_path):
    """Without token shift, masked clips give the seed's logits."""
    seed = seed_model()
    torch.save(seed.state_dict(), tmp_path / "seed.pt")
    ours = tf.load_pretrained(tmp_path / "seed.pt", heads=4, num_frames=5, image_size=32)
    video = torch.randn(2, 5, 3, 32, 32)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    with torch.no_grad():
        torch.testing.assert_close(ours(video, mask), seed(video, mask=mask), atol=1e-5, rtol=1e-5)


def test_seed_with_token_shift_and_frame_masks_padding_never_reaches_our_logits(tmp_path):
    """With token shift the seed moves padded frames' features into the last real frame, so its masked logits
    depend on what the padding holds. Ours zero padded frames before the shift: they never reach the logits,
    as a mask promises. Unmasked clips keep equal logits."""
    seed = seed_model(shift_tokens=True)
    torch.save(seed.state_dict(), tmp_path / "seed.pt")
    ours = tf.load_pretrained(tmp_path / "seed.pt", heads=4, num_frames=5, image_size=32)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    a = torch.randn(2, 5, 3, 32, 32)
    b = a.clone()
    b[1, 3:] = torch.randn(2, 3, 32, 32)  # other content in the padded frames only
    with torch.no_grad():
        torch.testing.assert_close(ours(a, mask)[0], seed(a, mask=mask)[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(a, mask), ours(b, mask), atol=0, rtol=0)  # padding is ignored
        leak = (seed(a, mask=mask)[1] - seed(b, mask=mask)[1]).abs().max()
        assert leak > 1e-3, f"the seed's padded frames changed its logits by only {leak:.2e}"
        assert (ours(a, mask)[1] - seed(a, mask=mask)[1]).abs().max() > 1e-3


def test_rotary_seed_loads_but_differs_only_by_the_fixed_rotary(tmp_path):
    """The seed's temporal rotary is not a rotation, so no correct rotary reproduces its logits; its weights
    still load strictly (its constant rotary buffers are dropped) and the model runs."""
    seed = seed_model(rotary_emb=True)
    torch.save(seed.state_dict(), tmp_path / "seed.pt")
    ours = tf.load_pretrained(tmp_path / "seed.pt", heads=4)
    assert ours.config.pos_emb == "rotary"
    with torch.no_grad():
        assert ours(torch.randn(1, 5, 3, 32, 32)).shape == (1, 7)


def test_joint_table_needs_the_right_size(tmp_path):
    torch.save(seed_model().state_dict(), tmp_path / "seed.pt")
    with pytest.raises(ValueError, match=r"pos_emb has 81 rows but num_frames=8"):
        tf.load_pretrained(tmp_path / "seed.pt", heads=4, image_size=32)
