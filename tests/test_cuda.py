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

    cfg = tiny_run(
        tmp_path,
        model_args=dict(dim=64, depth=2, heads=4),
        data=dict(synthetic_train=2048, synthetic_val=240),
        optim=dict(batch_size=32, epochs=3, precision=precision, lr=2e-3, warmup_steps=10, device="cuda", log_every=10),
    )
    result = fit(cfg)
    assert next(result["model"].parameters()).is_cuda
    assert result["metrics"]["top1"] > 0.3


def test_train_resume_eval_and_demo_evaluation_on_cuda(tmp_path):
    """Where the model is, everything runs: a CUDA run with an EMA, stopped mid-epoch and resumed (the EMA and the
    CUDA RNG come back onto the GPU), `eval --device cuda` on its checkpoint, and the demo's evaluation."""
    from timesformer.cli import main
    from timesformer.data import write_synthetic
    from timesformer.engine import checkpoint as ckpt
    from timesformer.engine.demo import evaluate_demo
    from timesformer.engine.loop import fit

    from .engine.helpers import tiny_run

    cfg = tiny_run(
        tmp_path,
        model_args=dict(drop_path_rate=0.1),
        optim=dict(device="cuda", precision="bf16", ema_decay=0.9, batch_size=8, max_minutes=1e-9),
    )
    result = fit(cfg)
    assert result["step"] == 1 and next(result["model"].parameters()).is_cuda
    state = ckpt.load_state(tmp_path / "run" / "last")
    assert state["rng"][0]["cuda"] is not None
    cfg.optim.max_minutes = 0
    result = fit(cfg, resume=True)
    assert result["epoch"] == 2 and result["step"] == 16
    root = write_synthetic(tmp_path / "files", 24, size=16, num_frames=8)
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(tmp_path / "run" / "best"),
                "--data",
                str(root),
                "--device",
                "cuda",
                "--sampling-rate",
                "1",
                "--fps",
                "8",
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    res = evaluate_demo(result["model"], cfg)
    assert res["videos"] == cfg.data.synthetic_val


def test_demo_runs_on_cuda(tmp_path):
    from timesformer.cli import main

    assert main(["demo", "--schemes", "all", "--steps", "3", "--out", str(tmp_path / "demo")]) == 0


@pytest.mark.parametrize("autocast", [False, True])
def test_the_speed_layer_computes_the_reference_on_cuda(autocast):
    """fused.fuse on CUDA: FusedMlp's autograd function and the temporal_fc fold give the reference's logits and
    gradients (fp32 closely, bf16 autocast within its rounding)."""
    import copy

    from timesformer.fused import fuse

    torch.backends.cuda.matmul.allow_tf32 = False
    model = small_model(drop_path_rate=0.2).cuda().train()
    fused = copy.deepcopy(model)
    fuse(fused, quiet=True)
    video = torch.randn(2, 4, 3, 32, 32, device="cuda")
    results = []
    for m in (model, fused):
        torch.manual_seed(0)
        with torch.autocast("cuda", torch.bfloat16, enabled=autocast):
            out = m(video).float()
        out.square().sum().backward()
        results.append((out.detach(), m.blocks[0].mlp.fc2.weight.grad, m.blocks[0].temporal_fc.weight.grad))
    tol = dict(atol=5e-2, rtol=5e-2) if autocast else dict(atol=1e-4, rtol=1e-4)
    for ref, got in zip(*results):
        torch.testing.assert_close(got, ref, **tol)
