"""LoRA fine-tuning (``finetune --lora R``): only the adapters and the head train; checkpoints hold the merged
native model, which ``load_pretrained`` (so predict, eval and export) reads as any, with the adapters beside it;
a stopped LoRA run resumes exactly."""

import json

import pytest
import torch

import timesformer as tf
from timesformer.cli import main
from timesformer.engine.loop import RunError, fit
from timesformer.pretrained import read_state

from .helpers import tiny_run

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A trained tiny model: the weights LoRA starts from."""
    out = tmp_path_factory.mktemp("base")
    fit(tiny_run(out, "base", model_args=dict(depth=2), optim=dict(epochs=1)))
    return out / "base" / "last"


def lora_run(tmp_path, base, name="lora", **optim):
    return tiny_run(
        tmp_path,
        name,
        model_args=dict(depth=2),
        pretrained=str(base),
        lora=4,
        lora_alpha=8.0,
        optim=dict(epochs=2, lr=3e-3, **optim),
    )


def test_only_adapters_and_head_train_and_the_checkpoint_is_the_merged_model(tmp_path, base):
    result = fit(lora_run(tmp_path, base))
    model = result["model"].eval()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    assert sum("lora_A" in n for n in trainable) == 2 * 6  # 2 blocks x (time qkv, proj; space qkv, proj; fc1, fc2)
    before = read_state(base / "model.safetensors")
    for name, p in model.named_parameters():  # the frozen base is the pretrained one
        if "base_layer" in name:
            torch.testing.assert_close(p, before[name.replace(".base_layer", "")])

    best = tmp_path / "lora" / "best"
    saved = read_state(best / "model.safetensors")
    assert saved.keys() == before.keys()  # native keys: no adapter, no base_layer
    loaded = tf.load_pretrained(best).eval()
    video = torch.randn(2, 8, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(video), model(video), atol=1e-5, rtol=1e-5)
        assert (loaded.blocks[0].attn.qkv.weight - before["blocks.0.attn.qkv.weight"]).abs().max() > 0
    adapters = read_state(best / "adapter_model.safetensors")
    assert adapters and all(k.startswith("base_model.model.") and ("lora_" in k or ".head." in k) for k in adapters)
    config = json.loads((best / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8.0 and len(config["target_modules"]) == 12


def test_a_stopped_lora_run_resumes_exactly(tmp_path, base):
    fit(lora_run(tmp_path, base, "straight"))
    stopped = lora_run(tmp_path, base, "stopped", max_minutes=1e-9)
    result = fit(stopped)
    while result["epoch"] < 2:
        result = fit(stopped, resume=True)
    for tag in ("last", "best"):
        for file in ("model.safetensors", "adapter_model.safetensors"):
            a, b = read_state(tmp_path / "straight" / tag / file), read_state(tmp_path / "stopped" / tag / file)
            for k in a:
                torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0, msg=f"{tag}/{file}/{k}")


def test_finetune_lora_from_the_command_line_and_eval_takes_its_checkpoint(tmp_path, base, capsys):
    from timesformer.data import write_synthetic

    from .helpers import write_config

    root = write_synthetic(tmp_path / "files", 24, size=16, num_frames=8)
    cfg = tiny_run(tmp_path, "cli", model_args=dict(depth=2), optim=dict(epochs=1, batch_size=8))
    config = write_config(cfg, tmp_path / "cli.yaml")
    argv = ["finetune", "--pretrained", str(base), "--config", str(config), "--lora", "2", "--lora-targets", "qkv,fc2"]
    assert main(argv) == 0
    adapters = read_state(tmp_path / "cli" / "best" / "adapter_model.safetensors")
    assert {k.split(".")[-3] for k in adapters if "lora_" in k} == {"qkv", "fc2"}
    capsys.readouterr()
    args = ["eval", "--checkpoint", str(tmp_path / "cli" / "best"), "--data", str(root), "--out", str(tmp_path / "e")]
    assert main([*args, "--sampling-rate", "1", "--fps", "8", "--device", "cpu"]) == 0
    assert "top-1" in capsys.readouterr().out.lower()


def test_lora_needs_pretrained_weights_and_names_unknown_targets(tmp_path, base):
    from timesformer.engine.config import load_run_config

    from .helpers import write_config

    path = write_config(tiny_run(tmp_path, lora=4), tmp_path / "c.yaml")
    with pytest.raises(RunError, match=r"lora adapts pretrained weights: set pretrained"):
        load_run_config(path)
    cfg = lora_run(tmp_path, base)
    cfg.lora_targets = ["query"]
    with pytest.raises(RunError, match=r"lora_targets \['query'\]: no nn.Linear of the model is named so"):
        fit(cfg)


def test_peft_reads_the_saved_adapters_and_a_changed_base_stops_the_resume(tmp_path, base):
    """PeftModel.from_pretrained on the pretrained model (with the run's head shape) gives the merged model's logits;
    a resume whose pretrained weights changed under it is refused, naming them."""
    import shutil

    import peft

    own = tmp_path / "own_base"  # a copy of the pretrained weights this run starts from, changed below
    shutil.copytree(base, own)
    fit(lora_run(tmp_path, own, max_minutes=1e-9))  # stopped after its first step
    last = tmp_path / "lora" / "last"
    saved = tf.load_pretrained(last).eval()
    start = tf.load_pretrained(own)
    start.reset_classifier(len(saved.config.labels), labels=saved.config.labels)
    wrapped = peft.PeftModel.from_pretrained(start, str(last)).eval()
    video = torch.randn(2, 8, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(video), saved(video), atol=1e-5, rtol=1e-5)

    model = tf.load_pretrained(own)
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight.add_(0.01)
    tf.save_pretrained(model, own)  # the same path, other weights
    with pytest.raises(RunError, match=r"qkv.weight is not the pretrained weights plus the run's adapters"):
        fit(lora_run(tmp_path, own), resume=True)
