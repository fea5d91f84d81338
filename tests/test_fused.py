"""The speed layer (timesformer.fused): exact, on the same parameters, and only where it is safe."""

import copy
import logging

import pytest
import torch
from torch import nn

import timesformer as tf
from timesformer.fused import FoldedProj, FusedMlp, StageBias, cpu_attention, fuse, unfuse
from timesformer.model.attention import attention

from .conftest import small_model

VIDEO = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
MASK = torch.tensor([[True] * 4, [True, True, False, False]])


def _step(model, seed=0):
    torch.manual_seed(seed)  # the same drop-path draws on both models
    logits = model(VIDEO, MASK)
    logits.square().sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("cls", ["average", "global"])
@pytest.mark.parametrize("scheme", tf.ATTENTIONS)
def test_fused_training_computes_the_reference(scheme, cls):
    model = small_model(attention=scheme, cls_attention=cls, drop_path_rate=0.3).train()
    fused = copy.deepcopy(model)
    report = fuse(fused)
    assert len(report.mlp) == 2 and not report.skipped
    assert len(report.fold) == 2 * len(fused.blocks[0].pre_stages)
    assert list(fused.state_dict()) == list(model.state_dict())  # the same keys: checkpoints don't change
    ref_logits, ref_grads = _step(model)
    logits, grads = _step(fused)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_fuse_keeps_the_parameters_and_unfuse_restores_the_modules():
    model = small_model().train()
    params = dict(model.named_parameters())
    fuse(model)
    assert isinstance(model.blocks[0].mlp, FusedMlp) and isinstance(model.blocks[0].temporal_fc, StageBias)
    assert isinstance(model.blocks[0].temporal_attn.proj, FoldedProj)
    assert {n: id(p) for n, p in model.named_parameters()} == {n: id(p) for n, p in params.items()}
    copied = copy.deepcopy(model)  # EMA and optimize() copy a fused model: the copy's fold reads its own weights
    with torch.no_grad():
        copied.blocks[0].temporal_fc.weight.zero_()
        assert not torch.equal(copied(VIDEO, MASK), model(VIDEO, MASK))
    unfuse(model)
    assert type(model.blocks[0].mlp).__name__ == "Mlp" and type(model.blocks[0].temporal_fc) is nn.Linear
    assert type(model.blocks[0].temporal_attn.proj) is nn.Linear
    assert {n: id(p) for n, p in model.named_parameters()} == {n: id(p) for n, p in params.items()}


def test_wrapped_modules_stay_on_the_reference_path_and_one_line_says_so(caplog):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, target_modules=["fc2", "temporal_fc"], init_lora_weights=False)
    lora = peft.get_peft_model(small_model().train(), config)
    with caplog.at_level(logging.INFO, logger="timesformer"):
        report = fuse(lora)
    assert not report.mlp and not report.fold and len(report.skipped) == 4
    assert "blocks.0.mlp.fc2" in next(iter(report.skipped)) and "not a plain nn.Linear" in report.line()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("timesformer")] == [report.line()]  # one line
    assert "peft.tuners.lora" in report.line()
    logits = lora(VIDEO, MASK)
    logits.sum().backward()
    assert all(p.grad is not None for n, p in lora.named_parameters() if "lora_" in n)
    with torch.no_grad():
        torch.testing.assert_close(logits, copy.deepcopy(lora).merge_and_unload()(VIDEO, MASK), atol=1e-5, rtol=1e-5)


def test_a_hook_added_after_fusing_sends_its_module_back_to_the_reference_path():
    model = small_model().train()
    reference = copy.deepcopy(model)
    fuse(model)
    seen = []
    model.blocks[1].mlp.fc2.register_forward_hook(lambda m, args, out: seen.append(out.shape))
    model.blocks[1].temporal_fc.register_forward_hook(lambda m, args, out: seen.append(out.shape))
    with pytest.warns(RuntimeWarning, match="reference path"):
        logits = model(VIDEO, MASK)
    assert len(seen) == 3  # fc2 on the patch tokens and on the cls token, temporal_fc once
    torch.testing.assert_close(logits, reference(VIDEO, MASK), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fused", [False, True])
def test_attention_dropout_is_honoured_with_a_frozen_backbone(fused):
    """With no gradient reaching q (a frozen backbone), attention dropout still drops in training."""
    model = small_model(attn_drop_rate=0.5).train()
    model.requires_grad_(False)
    model.head.requires_grad_(True)
    if fused:
        fuse(model)
    outs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        outs.append(model(VIDEO, MASK))
    assert (outs[0] - outs[1]).abs().max() > 1e-4
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(VIDEO, MASK), model(VIDEO, MASK))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("keys", [8, 197])
def test_the_cpu_kernel_computes_attention(dtype, keys):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(6, 2, keys, 16, generator=g).to(dtype) for _ in range(3))
    mask = torch.rand(6, 1, 1, keys, generator=g) > 0.3
    mask[..., 0] = True
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(cpu_attention(q, k, v, mask=mask), attention(q, k, v, mask=mask), **tol)
        torch.testing.assert_close(cpu_attention(q, k, v, mask=mask, impl="math"), attention(q, k, v, mask=mask), **tol)


def test_hooks_keep_their_modules_on_the_reference_path_and_unfuse_keeps_hooks():
    model = small_model().train()
    reference = copy.deepcopy(model)
    fired = []
    model.blocks[0].mlp.register_forward_hook(lambda m, args, out: fired.append("mlp"))
    model.blocks[0].temporal_attn.register_forward_hook(lambda m, args, out: fired.append("attn"))
    report = fuse(model, quiet=True)
    assert set(report.skipped) == {"blocks.0.mlp", "blocks.0.temporal_attn"}
    assert type(model.blocks[0].mlp).__name__ == "Mlp" and type(model.blocks[0].temporal_fc) is nn.Linear
    assert isinstance(model.blocks[1].mlp, FusedMlp)
    handle = model.blocks[1].mlp.register_forward_hook(lambda m, args, out: fired.append("fused mlp"))
    unfuse(model)  # the hook moves with the module it was put on
    torch.testing.assert_close(model(VIDEO, MASK), reference(VIDEO, MASK), atol=1e-5, rtol=1e-5)
    assert sorted(fired) == ["attn", "fused mlp", "fused mlp", "mlp", "mlp"]  # mlp: patch tokens and cls
    handle.remove()
    model(VIDEO, MASK)
    assert fired.count("fused mlp") == 2


def test_the_inference_fold_leaves_hooked_maps_alone():
    from timesformer.fused import fold_stage_fc

    model = small_model()
    fired = []
    model.blocks[0].temporal_fc.register_forward_hook(lambda m, args, out: fired.append(1))
    fold_stage_fc(model)
    assert type(model.blocks[0].temporal_fc) is nn.Linear and isinstance(model.blocks[1].temporal_fc, nn.Identity)
    with torch.no_grad():
        model(VIDEO, MASK)
    assert fired == [1]


def test_gelu_kept_or_recomputed_gives_the_same_gradients(monkeypatch):
    """Small GELU outputs are kept for the backward pass, large ones recomputed: the gradients are identical, and
    only the recomputing path leaves the output out of what autograd saves."""
    import timesformer.fused as fused

    grads, saved = {}, {}
    for name, limit in (("kept", 2**40), ("recomputed", 0)):
        monkeypatch.setattr(fused, "KEEP_GELU_BYTES", limit)
        model = small_model(attention="divided")
        fuse(model, quiet=True)
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            _, grads[name] = _step(model)
        saved[name] = sum(sizes)
    assert grads["kept"].keys() == grads["recomputed"].keys()
    for key, value in grads["kept"].items():
        assert torch.equal(value, grads["recomputed"][key]), key
    hidden = VIDEO.shape[0] * (1 + 4 * 16) * 4 * 32  # one block's GELU output at most (tokens x 4 dim), b=2
    assert saved["kept"] > saved["recomputed"] >= saved["kept"] - 2 * 2 * hidden
