"""timesformer.optimize: every precision against eager, the input left alone, masks, compile's fallback, and
int8 agreement with fp32 on a trained model."""
import copy
import warnings

import pytest
import torch

import timesformer as tf
from timesformer.fast import PRECISIONS

from ..conftest import small_model

VIDEO = torch.randn(3, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # not the global RNG
# at import, whose state depends on what pytest collected first (int8 drifts 3-5 % depending on the clip)
MASK = torch.tensor([[True] * 4, [True, True, False, False], [True] * 4])
# how far each precision may move the logits of a random-init model, relative to their largest magnitude
TOLERANCE = {"fp32": 1e-6, "bf16": 0.03, "int8": 0.05}


@pytest.mark.parametrize("pos_emb", ["rotary", "learned"])
def test_a_model_cast_to_bf16_runs_in_bf16(pos_emb):
    """The rotary angles follow the weights' dtype (fp32 angles used to turn bf16 queries into fp32 ones, and the
    next linear layer refused them)."""
    model = small_model(pos_emb=pos_emb)
    with torch.no_grad():
        ref = model(VIDEO, MASK)
        low = copy.deepcopy(model).to(torch.bfloat16)(VIDEO.bfloat16(), MASK)
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max() <= TOLERANCE["bf16"] * ref.abs().max()


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("scheme", ["divided", "joint"])
def test_optimize_matches_eager_within_its_tolerance(precision, scheme):
    model = small_model(attention=scheme)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = tf.optimize(model, precision=precision)
    with torch.no_grad():
        for mask in (None, MASK):
            ref = model(VIDEO, mask)
            out = fast(VIDEO, mask)
            assert out.dtype == torch.float32 and out.shape == ref.shape
            assert (out - ref).abs().max() <= TOLERANCE[precision] * ref.abs().max(), precision
        torch.testing.assert_close(fast.forward_features(VIDEO), model.forward_features(VIDEO),
                                   atol=3 * TOLERANCE[precision] * model.forward_features(VIDEO).abs().max(), rtol=0)
    # the model passed in is untouched: same weights, same dtype, still trainable
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())
    if precision == "int8":
        assert sum(type(m).__name__ == "Linear" and "quantized" in type(m).__module__
                   for m in fast.modules()) == sum(isinstance(m, torch.nn.Linear) for m in model.modules())


def test_optimize_names_what_it_takes():
    with pytest.raises(ValueError, match=r"precision must be one of \('fp32', 'bf16', 'int8'\); got 'fp16'"):
        tf.optimize(small_model(), precision="fp16")
    with pytest.raises(ValueError, match="video must be"):
        tf.optimize(small_model())(torch.randn(4, 3, 32, 32))


def test_a_failed_compile_warns_and_runs_eagerly(monkeypatch):
    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("InductorError: no working C++ compiler\nmore detail")
        return run
    monkeypatch.setattr(torch, "compile", broken_compile)
    model = small_model()
    with pytest.warns(RuntimeWarning, match=r"torch.compile failed \(RuntimeError: InductorError: no working C\+\+ "
                                            r"compiler\); running forward eagerly"):
        fast = tf.optimize(model, precision="bf16", compile=True, example=VIDEO)
    assert not fast.compiled and callable(fast.compile)  # nn.Module.compile is not shadowed
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning: it stays eager
        with torch.no_grad():
            torch.testing.assert_close(fast(VIDEO), tf.optimize(model, precision="bf16")(VIDEO))


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_model_matches_eager(precision):
    model = small_model()
    fast = tf.optimize(model, precision=precision, compile=True, example=VIDEO)
    assert fast.compiled
    eager = tf.optimize(model, precision=precision)
    torch.testing.assert_close(fast(VIDEO), eager(VIDEO), atol=2 * TOLERANCE[precision] + 1e-5, rtol=1e-2)


def test_int8_agrees_with_fp32_on_a_trained_model():
    """A model that learned four SyntheticMotion classes: int8 names the same class as fp32 on >= 99 % of 480
    held-out clips, and moves the logits by under 5 % of their mean magnitude."""
    from torch.utils.data import DataLoader

    from timesformer.data import SyntheticMotion, collate

    classes = ("move_left", "move_up", "still_disc", "still_cross")
    torch.manual_seed(0)
    model = tf.create_model("timesformer_tiny", dim=64, depth=2, heads=2, dim_head=32, num_classes=4)
    train = SyntheticMotion(40 * 32, classes=classes, seed=1, mean=model.config.mean, std=model.config.std)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for batch in DataLoader(train, batch_size=32, shuffle=True, collate_fn=collate):
        torch.nn.functional.cross_entropy(model(batch["video"]), batch["label"]).backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    test = SyntheticMotion(480, classes=classes, split="test", mean=model.config.mean, std=model.config.std)
    fast = tf.optimize(model, precision="int8")
    ref, low, labels = [], [], []
    with torch.no_grad():
        for batch in DataLoader(test, batch_size=120, collate_fn=collate):
            ref.append(model(batch["video"]))
            low.append(fast(batch["video"]))
            labels.append(batch["label"])
    ref, low, labels = torch.cat(ref), torch.cat(low), torch.cat(labels)
    assert (ref.argmax(1) == labels).float().mean() > 0.5  # it learned something (chance: 25 %)
    assert (low.argmax(1) == ref.argmax(1)).float().mean() >= 0.99
    assert (low - ref).abs().mean() < 0.05 * ref.abs().mean()
