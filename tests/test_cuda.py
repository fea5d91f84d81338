"""CUDA checks (skipped without a GPU): the fused path on GPU kernels, bf16/fp16 autocast, fp16 training."""
import pytest
import torch

from .conftest import SCHEMES, small_model

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("pos_emb", ["learned", "rotary"])
def test_sdpa_equals_math_on_cuda(scheme, pos_emb):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    fast = small_model(attention=scheme, pos_emb=pos_emb, image_size=40).cuda()
    ref = small_model(attention=scheme, pos_emb=pos_emb, image_size=40, attn_impl="math").cuda()
    ref.load_state_dict(fast.state_dict())
    video = torch.randn(2, 5, 3, 40, 40, device="cuda")
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]], device="cuda")
    with torch.no_grad():
        for m in (None, mask):
            torch.testing.assert_close(fast(video, m), ref(video, m), atol=1e-4, rtol=1e-4)
            cpu = fast.cpu()(video.cpu(), None if m is None else m.cpu())
            fast.cuda()
            torch.testing.assert_close(fast(video, m).cpu(), cpu, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_close_to_fp32(dtype):
    model = small_model().cuda()
    video = torch.randn(4, 4, 3, 32, 32, device="cuda")
    with torch.no_grad():
        ref = model(video)
        with torch.autocast("cuda", dtype=dtype):
            low = model(video).float()
    assert (low - ref).abs().max() < 0.05 * ref.abs().max() + 0.05


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_training_on_cuda(tmp_path, precision):
    from timesformer.engine.loop import fit

    from .engine.helpers import tiny_run

    cfg = tiny_run(tmp_path, model_args=dict(dim=64, depth=2, heads=4),
                   data=dict(synthetic_train=2048, synthetic_val=240),
                   optim=dict(batch_size=32, epochs=3, precision=precision, lr=2e-3, warmup_steps=10, device="cuda",
                              log_every=10))
    result = fit(cfg)
    assert next(result["model"].parameters()).is_cuda
    assert result["metrics"]["top1"] > 0.3
