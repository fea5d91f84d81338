"""Frame masks: padded clips equal shorter clips (rotary), and masked frames never matter."""

import pytest
import torch

from ..conftest import POS, SCHEMES, small_model


@pytest.mark.parametrize("cls_attention", ["average", "global"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_padded_clip_equals_shorter_clip_with_rotary(scheme, cls_attention):
    model = small_model(attention=scheme, pos_emb="rotary", cls_attention=cls_attention)
    short = torch.randn(2, 3, 3, 32, 32)
    padded = torch.cat([short, torch.randn(2, 3, 3, 32, 32)], dim=1)  # 3 real + 3 junk frames
    mask = torch.tensor([[True] * 3 + [False] * 3] * 2)
    with torch.no_grad():
        torch.testing.assert_close(model(padded, mask), model(short), atol=1e-5, rtol=1e-5)


def test_padded_clip_equals_shorter_clip_with_token_shift():
    model = small_model(attention="divided", pos_emb="rotary", cls_attention="global", shift_tokens=True)
    short = torch.randn(1, 3, 3, 32, 32)
    padded = torch.cat([short, 100 * torch.randn(1, 2, 3, 32, 32)], dim=1)
    mask = torch.tensor([[True] * 3 + [False] * 2])
    with torch.no_grad():
        torch.testing.assert_close(model(padded, mask), model(short), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pos_emb", POS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_logits_ignore_masked_frame_content(scheme, pos_emb):
    model = small_model(attention=scheme, pos_emb=pos_emb)
    video = torch.randn(2, 5, 3, 32, 32)
    mask = torch.tensor([[True, False, True, True, False], [False, True, True, False, False]])
    other = torch.where(mask[:, :, None, None, None], video, 1e3 * torch.randn_like(video))
    other[0, 1] = float("nan")  # not even NaN in a padded frame leaks
    with torch.no_grad():
        out, out_other = model(video, mask), model(other, mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, out_other, atol=1e-5, rtol=1e-5)
    # and the mask matters: without it, the junk changes the logits
    with torch.no_grad():
        assert not torch.allclose(model(video), model(torch.nan_to_num(other)), atol=1e-3)


def test_all_true_mask_equals_no_mask():
    model = small_model()
    video = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(video, torch.ones(2, 4, dtype=torch.bool)), model(video))
