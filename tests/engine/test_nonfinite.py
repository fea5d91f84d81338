"""A non-finite loss stops the run naming the step and the last good checkpoint (or is skipped, N times, on
request); non-finite weights are never saved."""

import math
import re

import pytest
import torch

from timesformer.data import SyntheticMotion
from timesformer.engine import checkpoint as ckpt
from timesformer.engine import loop
from timesformer.engine.loop import RunError, fit
from timesformer.pretrained import read_state

from .helpers import metrics, tiny_run

# 64 clips, batch 16: 4 steps an epoch; clip 16 + 3 of the run is in the first batch of epoch 2 (step 5)
POISONED_CALL = 4 * 16 + 3


@pytest.fixture
def nan_clip(monkeypatch):
    """The n-th training clip the loader asks for is all NaN (a broken decode, a bad normalisation ...)."""
    real, calls = SyntheticMotion.__getitem__, []

    def getitem(self, i):
        sample = real(self, i)
        if self.split == "train":
            calls.append(i)
            if len(calls) == POISONED_CALL:
                sample["video"] = torch.full_like(sample["video"], float("nan"))
        return sample

    monkeypatch.setattr(SyntheticMotion, "__getitem__", getitem)


def all_finite(folder):
    return all(torch.isfinite(t).all() for t in read_state(folder / "model.safetensors").values())


def test_nonfinite_loss_stops_naming_step_and_last_good_checkpoint(tmp_path, nan_clip):
    last = re.escape(str(tmp_path / "run" / "last"))
    with pytest.raises(
        RunError,
        match=rf"non-finite loss \(nan\) at step 5 \(epoch 2\); last good checkpoint: "
        rf"{last} \(step 4\).*optim.skip_nonfinite",
    ):
        fit(tiny_run(tmp_path))
    assert ckpt.load_state(tmp_path / "run" / "last")["step"] == 4
    assert all_finite(tmp_path / "run" / "last") and all_finite(tmp_path / "run" / "best")


def test_skip_nonfinite_skips_that_step_and_logs_it(tmp_path, nan_clip):
    result = fit(tiny_run(tmp_path, optim=dict(skip_nonfinite=1)))
    assert result["step"] == 8 and result["epoch"] == 2
    skipped = [r for r in metrics(tmp_path / "run") if "skipped" in r]
    assert skipped == [{"step": 5, "epoch": 2, "skipped": "non-finite loss (nan)"}]
    assert all_finite(tmp_path / "run" / "last") and all_finite(tmp_path / "run" / "best")


def test_nonfinite_weights_are_never_saved_as_best_or_last(tmp_path, monkeypatch):
    """Weights turn NaN in the last step of the first epoch (an optimiser gone wrong): no checkpoint holds them."""
    real = loop.build_optimizer

    def build(model, **kwargs):
        optimizer = real(model, **kwargs)

        def poison(opt, args, kw):
            opt.steps = getattr(opt, "steps", 0) + 1
            if opt.steps == 4:
                with torch.no_grad():
                    model.head.weight.fill_(float("nan"))

        optimizer.register_step_post_hook(poison)
        return optimizer

    monkeypatch.setattr(loop, "build_optimizer", build)
    with pytest.raises(
        RunError,
        match=r"non-finite weights \(head.weight\) after step 4 \(epoch 1\); last good "
        r"checkpoint: none yet",
    ):
        fit(tiny_run(tmp_path))
    assert ckpt.find_checkpoint(tmp_path / "run") is None and ckpt.find_checkpoint(tmp_path / "run", "best") is None


def test_nonfinite_gradients_with_a_finite_loss_are_caught_too(tmp_path, monkeypatch):
    real = loop.build_optimizer

    def build(model, **kwargs):  # the head's gradient is inf in the 3rd backward pass
        calls = []
        model.head.weight.register_hook(
            lambda g: (calls.append(1), g if len(calls) != 3 else torch.full_like(g, float("inf")))[1]
        )
        return real(model, **kwargs)

    monkeypatch.setattr(loop, "build_optimizer", build)
    fit(tiny_run(tmp_path, optim=dict(skip_nonfinite=1)))
    skipped = [r for r in metrics(tmp_path / "run") if "skipped" in r]
    assert skipped == [{"step": 3, "epoch": 1, "skipped": "non-finite gradients (norm inf)"}]
    assert all_finite(tmp_path / "run" / "last")
    assert all(math.isfinite(r["grad_norm"]) for r in metrics(tmp_path / "run") if "grad_norm" in r)
