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


# --- the training hot path: no host sync, fp16's scaler, exact resume -------------------------------------------
def cuda_run(tmp_path, **optim):
    from timesformer.engine import distributed as distr
    from timesformer.engine import loop

    from .engine.helpers import tiny_run

    cfg = tiny_run(tmp_path, optim=dict(device="cuda", batch_size=8, epochs=1, log_every=1000, **optim))
    return loop.build_run(cfg, distr.Dist(), torch.device("cuda"))


@pytest.mark.parametrize("optim", [dict(precision="bf16"), dict(precision="fp16", ema_decay=0.9, clip_grad=1.0)])
def test_training_steps_never_sync_the_host(tmp_path, monkeypatch, optim):
    """Under ``set_sync_debug_mode("error")`` a whole epoch of steps runs; only ``_flush`` (log_every, the epoch's
    end) may read the device."""
    from timesformer.engine import loop
    from timesformer.engine.optim import can_skip_on_device

    run = cuda_run(tmp_path, **optim)
    assert can_skip_on_device(run.optimizer)  # fused AdamW: the CUDA default
    real_flush = loop._flush

    def flush(run):
        torch.cuda.set_sync_debug_mode(0)
        try:
            real_flush(run)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    monkeypatch.setattr(loop, "_flush", flush)
    torch.cuda.set_sync_debug_mode("error")
    try:
        assert loop.train_one_epoch(run)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert run.pos.step == 8 and run.pos.loss_count == 8


def test_fp16_overflow_skips_the_step_and_leaves_the_ema_and_a_scale_below_1_stops(tmp_path):
    from timesformer.engine import loop

    run = cuda_run(tmp_path, precision="fp16", ema_decay=0.5, warmup_steps=0)  # a real lr from the first step
    run.scaler = torch.amp.GradScaler("cuda", init_scale=1024.0)  # no overflow of its own in the first step
    batch = next(iter(run.train_loader))

    def step(poison: bool):
        acc = loop._Accumulated()
        acc.losses.append(loop._forward_backward(run, batch, sync=True))
        acc.contributed, acc.synced = 1, True
        if poison:  # gradients that overflow fp16: the scaler's usual business, not a skipped step
            next(run.model.parameters()).grad.fill_(float("inf"))
        before = (
            [p.detach().clone() for p in run.model.parameters()],
            [t.clone() for t in run.ema.state_dict().values()],
        )
        scale = run.scaler.get_scale() if run.scaler._scale is not None else None
        run.pos.batch += 1  # as train_one_epoch counts its micro-batches
        loop._optimizer_step(run, acc)
        after = (list(run.model.parameters()), list(run.ema.state_dict().values()))
        same = [all(torch.equal(a, b) for a, b in zip(x, y)) for x, y in zip(before, after)]
        return same, scale

    assert step(poison=False)[0] == [False, False]
    same, scale = step(poison=True)
    assert same == [True, True] and run.scaler.get_scale() == scale / 2
    loop._flush(run)  # an overflow is not a skipped step: nothing to report
    assert run.pos.skipped == 0
    run.scaler.update(new_scale=1.0)
    step(poison=True)
    with pytest.raises(loop.RunError, match=r"fp16 loss scale fell to 0.5 by step 3"):
        loop._flush(run)


def test_an_interrupted_cuda_run_resumes_to_the_same_weights(tmp_path):
    """bf16 autocast, fused AdamW, drop path and an EMA on the GPU: stopped after every step and resumed, the run
    ends where an uninterrupted one does (to the GPU's rounding: its reductions need not be deterministic)."""
    from timesformer.engine.loop import fit
    from timesformer.pretrained import read_state

    from .engine.helpers import tiny_run

    def cfg(name, **optim):
        return tiny_run(
            tmp_path,
            name,
            model_args=dict(drop_path_rate=0.2, depth=2),
            optim=dict(device="cuda", precision="bf16", ema_decay=0.9, batch_size=16, **optim),
        )

    fit(cfg("straight"))
    stopped = cfg("stopped", max_minutes=1e-9)
    result = fit(stopped)
    while result["epoch"] < 2:
        result = fit(stopped, resume=True)
    assert result["step"] == 8
    for tag in ("last", "best"):
        a = read_state(tmp_path / "straight" / tag / "model.safetensors")
        b = read_state(tmp_path / "stopped" / tag / "model.safetensors")
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-4, rtol=1e-4, msg=f"{tag}/{k}")


# --- inference: the fast path, serve and sharded extract on the GPU ----------------------------------------------
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_optimize_compiles_with_cuda_graphs_and_each_call_keeps_its_logits(precision):
    import timesformer as tf

    model = small_model().cuda()
    clips = [torch.randn(b, 4, 3, 32, 32, device="cuda") for b in (1, 4, 1)]
    eager = tf.optimize(model, precision=precision)
    fast = tf.optimize(model, precision=precision, compile=True, example=clips[0])
    assert fast.compiled and fast.graphs
    outs = [fast(c) for c in clips]  # replays of one graph must not overwrite an earlier call's logits
    for c, out in zip(clips, outs):
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, eager(c), atol=0.05, rtol=0.05)
    assert not torch.equal(outs[0], outs[2])


def test_serve_on_cuda_answers_what_the_predictor_does(tmp_path, monkeypatch):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from timesformer.inference import Predictor
    from timesformer.serve import create_app

    from .conftest import labelled_tiny_model
    from .data.videos import write_video

    write_video(tmp_path / "a.mp4", 60, fps=30, size=64)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # fp32 on both sides, whatever ran before
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model = labelled_tiny_model()
    ref = Predictor(model).predict(tmp_path / "a.mp4", topk=3)["top"]
    with TestClient(create_app(Predictor(model, device="cuda"))) as client:
        files = {"file": ("a.mp4", (tmp_path / "a.mp4").read_bytes(), "video/mp4")}
        body = client.post("/v1/predict", files=files, data={"topk": "3"}).json()
    assert body["labels"] == [t["class"] for t in ref]
    assert body["scores"] == pytest.approx([t["prob"] for t in ref], abs=1e-4)


@pytest.mark.parametrize("procs", [1, 2])
def test_sharded_extract_on_cuda_equals_the_cpu(tmp_path, procs):
    """One CUDA process, and two (NCCL, a GPU each) where there are two GPUs: the CPU's features."""
    import timesformer as tf
    from timesformer.cli import main
    from timesformer.inference.batch import read_shards

    from .conftest import labelled_tiny_model
    from .data.videos import write_video
    from .engine.helpers import run, torchrun

    if procs == 2 and torch.cuda.device_count() < 2:
        pytest.skip("two NCCL processes need two GPUs (a rank per device)")
    tf.save_pretrained(labelled_tiny_model(), tmp_path / "ckpt")
    for i in range(6):
        write_video(tmp_path / "v" / f"{i}.mp4", 20 + 5 * i, size=48)
    (tmp_path / "list.txt").write_text("".join(f"v/{i}.mp4\n" for i in range(6)))
    args = ["extract", "--list", str(tmp_path / "list.txt"), "--checkpoint", str(tmp_path / "ckpt")]
    assert main([*args, "--out", str(tmp_path / "cpu"), "--format", "shards", "--device", "cpu"]) == 0
    gpu = [*args, "--out", str(tmp_path / "gpu"), "--format", "shards", "--device", "cuda"]
    if procs == 1:
        assert main(gpu) == 0
    else:
        proc = run(torchrun(2, *gpu), timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
    cpu, cuda = read_shards(tmp_path / "cpu"), read_shards(tmp_path / "gpu")
    assert cpu.keys() == cuda.keys() and len(cpu) == 6
    for vid, entry in cpu.items():
        torch.testing.assert_close(cuda[vid]["tensors"]["pooled"], entry["tensors"]["pooled"], atol=1e-3, rtol=1e-3)
