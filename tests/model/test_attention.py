"""The fast (SDPA) path equals the reference (einsum + softmax) path, everywhere."""

import pytest
import torch

from timesformer.model.attention import attention

from ..conftest import POS, SCHEMES, small_model


def test_attention_function_paths_agree_with_mask():
    q, k, v = (torch.randn(3, 2, 5, 8) for _ in range(3))
    mask = torch.rand(3, 1, 1, 5) > 0.4
    mask[..., 0] = True
    out_sdpa = attention(q, k, v, mask=mask, impl="sdpa")
    out_math = attention(q, k, v, mask=mask, impl="math")
    torch.testing.assert_close(out_sdpa, out_math, atol=1e-5, rtol=1e-5)
    # masked keys really are ignored: changing their values changes nothing
    v2 = torch.where(mask[:, :, 0, :, None].expand_as(v), v, torch.randn_like(v))
    torch.testing.assert_close(attention(q, k, v2, mask=mask, impl="math"), out_math)


def test_attention_unknown_impl():
    q = torch.randn(1, 1, 2, 4)
    with pytest.raises(ValueError, match="impl"):
        attention(q, q, q, impl="flash3")


@pytest.mark.parametrize("cls_attention", ["average", "global"])
@pytest.mark.parametrize("pos_emb", POS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_sdpa_equals_math_every_scheme(scheme, pos_emb, cls_attention):
    fast = small_model(attention=scheme, pos_emb=pos_emb, cls_attention=cls_attention, image_size=40)
    ref = small_model(attention=scheme, pos_emb=pos_emb, cls_attention=cls_attention, image_size=40, attn_impl="math")
    ref.load_state_dict(fast.state_dict())
    video = torch.randn(2, 5, 3, 40, 40)  # odd T and a 5x5 grid: unequal sparse groups are padded
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    with torch.no_grad():
        for m in (None, mask):
            torch.testing.assert_close(fast(video, m), ref(video, m), atol=1e-5, rtol=1e-5)
