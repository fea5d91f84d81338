"""Layer-wise lr decay (``optim.layer_decay``): the head trains at the schedule's lr, each block below it at one
more factor of the decay, the embeddings lowest; norms, biases and embeddings keep no weight decay."""

import pytest
import torch

from timesformer.engine.config import load_run_config
from timesformer.engine.distributed import Dist
from timesformer.engine.loop import RunError, build_run, fit, train_one_epoch
from timesformer.engine.optim import lr_at, param_groups

from .helpers import tiny_run, write_config


def scales(model, decay, prefix=""):
    """parameter name -> (lr scale, weight decay)"""
    names = {id(p): prefix + n for n, p in model.named_parameters()}
    return {
        names[id(p)]: (g.get("lr_scale", 1.0), g["weight_decay"])
        for g in param_groups(model, 0.05, decay)
        for p in g["params"]
    }


def test_each_layer_gets_its_power_of_the_decay(tiny_model_depth2):
    got = scales(tiny_model_depth2, 0.5)
    assert got["head.weight"] == (1.0, 0.05) and got["head.bias"] == (1.0, 0.0) and got["norm.weight"] == (1.0, 0.0)
    assert got["blocks.1.attn.qkv.weight"] == (0.5, 0.05) and got["blocks.1.norm1.bias"] == (0.5, 0.0)
    assert got["blocks.0.attn.qkv.weight"] == (0.25, 0.05) and got["blocks.0.temporal_attn.qkv.weight"] == (0.25, 0.05)
    assert got["patch_embed.proj.weight"] == (0.125, 0.05)
    for name in ("cls_token", "pos_embed", "time_embed", "patch_embed.proj.bias"):
        assert got[name] == (0.125, 0.0), name
    assert len(got) == len(list(tiny_model_depth2.parameters()))  # every parameter in exactly one group
    off = scales(tiny_model_depth2, 1.0)
    assert {v for v in off.values()} == {(1.0, 0.05), (1.0, 0.0)}
    assert len(param_groups(tiny_model_depth2, 0.05)) == 2  # off: the two groups runs have always had


def test_a_wrapped_models_names_find_their_layer(tiny_model_depth2):
    """peft prefixes every name (``base_model.model.blocks.0...``): the layers are found all the same."""
    wrapper = torch.nn.Module()
    wrapper.base_model = torch.nn.Module()
    wrapper.base_model.model = tiny_model_depth2
    got = scales(wrapper, 0.5)
    assert got["base_model.model.head.weight"] == (1.0, 0.05)
    assert got["base_model.model.blocks.0.attn.qkv.weight"] == (0.25, 0.05)
    assert got["base_model.model.patch_embed.proj.weight"] == (0.125, 0.05)


def test_training_sets_each_groups_lr_from_the_schedule(tmp_path):
    cfg = tiny_run(tmp_path, model_args=dict(depth=2), optim=dict(epochs=1, layer_decay=0.5, warmup_steps=0))
    run = build_run(cfg, Dist(), torch.device("cpu"))
    assert train_one_epoch(run)
    step = run.pos.step
    base = lr_at(step - 1, base=cfg.optim.lr, total=step, warmup=0, min_lr=cfg.optim.min_lr)
    lrs = sorted({round(g["lr"] / base, 6) for g in run.optimizer.param_groups})
    assert lrs == [0.125, 0.25, 0.5, 1.0]


def test_layer_decay_is_checked_and_fixed_on_resume(tmp_path):
    path = write_config(tiny_run(tmp_path, optim=dict(layer_decay=0.75)), tmp_path / "c.yaml")
    assert load_run_config(path).optim.layer_decay == 0.75
    with pytest.raises(RunError, match=r"optim.layer_decay must be in \(0, 1\] \(1 = off\); got 1.5"):
        load_run_config(path, ["optim.layer_decay=1.5"])
    fit(tiny_run(tmp_path, optim=dict(epochs=1)))
    with pytest.raises(RunError, match=r"optim.layer_decay: the run has 1.0, this resume asks for 0.75"):
        fit(tiny_run(tmp_path, optim=dict(epochs=2, layer_decay=0.75)), resume=True)


@pytest.fixture
def tiny_model_depth2():
    from timesformer import create_model

    from .helpers import TINY

    return create_model("timesformer_tiny", **{**TINY, "depth": 2, "num_classes": 3, "pos_emb": "learned"})
