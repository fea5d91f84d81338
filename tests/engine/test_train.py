"""Training end to end on synthetic data: learning, exact resume, crash safety, DDP equality, finetune."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import timesformer as tf
from timesformer.engine import checkpoint as ckpt_mod
from timesformer.engine.loop import RunError, fit
from timesformer.pretrained import read_state

from .helpers import tiny_run


def weights(run_dir, tag="last"):
    return read_state(Path(run_dir) / tag / "model.safetensors")


def test_tiny_run_learns_well_above_chance(tmp_path):
    cfg = tiny_run(
        tmp_path,
        model_args=dict(dim=64, depth=2, heads=4),
        data=dict(synthetic_train=2048, synthetic_val=240),
        optim=dict(batch_size=32, epochs=3, lr=2e-3, warmup_steps=10, log_every=10),
    )
    result = fit(cfg)
    top1 = result["metrics"]["top1"]
    assert top1 > 0.3, f"top-1 {top1:.3f} after 3 short epochs (chance 0.083)"
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"last", "best", "metrics.jsonl", "config.yaml", "classes.json"}
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if "top1" in r] == [1, 2, 3]
    model = tf.load_pretrained(run / "best")  # a run checkpoint is a load_pretrained folder, with class names
    assert model.config.labels[0] == "move_left"
    # the same classes as mp4 files in a folder (sorted by name there): eval pairs them by name, not position
    from timesformer.cli import main
    from timesformer.data import write_synthetic

    root = write_synthetic(tmp_path / "files", 120, split="val", size=16, num_frames=8)
    assert model.config.sampling == "segment"  # the checkpoint says how its clips were cut: no flags needed
    assert main(["eval", "--checkpoint", str(run / "best"), "--data", str(root), "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["top1"] > 0.3, f"top-1 {report['top1']:.3f} on the same classes written as files"


def test_a_bf16_run_trains_in_autocast_with_fp32_weights(tmp_path):
    # the learning test above runs fp32: bf16 autocast on a CPU without bf16 units is emulated (124 s against 30 s)
    before = tiny_run(tmp_path, "before", optim=dict(epochs=1, precision="bf16"))
    fit(before)
    losses = [
        r["loss"]
        for r in map(json.loads, (tmp_path / "before" / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    ]
    assert len(losses) == 4 and all(0 < x < 10 for x in losses)  # 64 clips at 16: 4 finite steps
    state = weights(tmp_path / "before")
    assert {v.dtype for v in state.values()} == {torch.float32}  # autocast: the weights stay fp32
    init = tf.create_model(before.model, **before.model_args, num_classes=12)
    moved = [k for k, v in state.items() if not torch.equal(v, init.state_dict()[k])]
    assert moved, "no weight changed in a bf16 epoch"


def test_resume_is_exact(tmp_path):
    fit(tiny_run(tmp_path, "straight", optim=dict(epochs=3)))
    fit(tiny_run(tmp_path, "interrupted", optim=dict(epochs=3)), stop_after_epochs=1)
    assert json.loads((tmp_path / "interrupted" / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 1
    fit(tiny_run(tmp_path, "interrupted", optim=dict(epochs=3)), resume=True)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "interrupted")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_crash_while_saving_resumes_from_previous_checkpoint(tmp_path, monkeypatch):
    fit(tiny_run(tmp_path, "straight", optim=dict(epochs=3)))
    real_replace, calls = os.replace, []

    def crashing_replace(src, dst):
        calls.append(dst)
        if str(dst).endswith("last") and len([c for c in calls if str(c).endswith("last")]) == 2:
            raise KeyboardInterrupt("killed while saving epoch 2")  # after last -> last.old, before tmp -> last
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "replace", crashing_replace)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_run(tmp_path, "crashy", optim=dict(epochs=3)))
    monkeypatch.setattr(ckpt_mod.os, "replace", real_replace)
    run = tmp_path / "crashy"
    assert not (run / "last").exists() and (run / "last.old").exists()  # only the previous good checkpoint
    assert ckpt_mod.load_state(ckpt_mod.find_checkpoint(run))["epoch"] == 1
    fit(tiny_run(tmp_path, "crashy", optim=dict(epochs=3)), resume=True)
    a, b = weights(tmp_path / "straight"), weights(run)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_accumulation_equals_a_twice_larger_batch_and_leaves_nothing_over(tmp_path):
    """56 clips: 7 micro-batches of 8 an epoch, 3 steps of 2; the 7th micro-batch must not leak into epoch 2."""
    data = dict(synthetic_train=56)
    fit(tiny_run(tmp_path, "accum", data=data, optim=dict(batch_size=8, accum_steps=2, epochs=2)))
    fit(tiny_run(tmp_path, "batch", data=data, optim=dict(batch_size=16, epochs=2)))
    a, b = weights(tmp_path / "accum"), weights(tmp_path / "batch")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)
    steps = [json.loads(x)["step"] for x in (tmp_path / "accum" / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 6


def test_existing_run_is_never_overwritten(tmp_path):
    fit(tiny_run(tmp_path, optim=dict(epochs=1)))
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(RunError, match="already exists; pass --resume to continue it or --overwrite"):
        fit(tiny_run(tmp_path, optim=dict(epochs=1)))
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before


def test_two_process_gloo_ddp_equals_one_process(tmp_path):
    common = [
        "model=timesformer_tiny",
        "model_args.image_size=16",
        "model_args.patch_size=4",
        "model_args.dim=32",
        "model_args.depth=1",
        "model_args.heads=2",
        "model_args.dim_head=16",
        "data.kind=synthetic",
        "data.synthetic_train=64",
        "data.synthetic_val=24",
        "data.synthetic_size=16",
        "optim.batch_size=16",
        "optim.epochs=2",
        "optim.precision=fp32",
        "optim.warmup_steps=2",
        "optim.log_every=1",
        f"out={tmp_path}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "timesformer",
        "train",
        *common,
        "name=ddp",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from timesformer.engine.config import load_run_config

    fit(load_run_config(None, common + ["name=single"]))
    losses = {}
    for name in ("ddp", "single"):
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in rows if "loss" in r]
    assert len(losses["ddp"]) == len(losses["single"]) == 8
    torch.testing.assert_close(torch.tensor(losses["ddp"]), torch.tensor(losses["single"]), atol=1e-5, rtol=0)
    val = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines() if "top1" in x]
    assert val[-1]["videos"] == 24  # evaluation gathered across both ranks


def test_finetune_new_head_and_frozen_backbone(tmp_path):
    base = tiny_run(tmp_path, "base", optim=dict(epochs=1))
    fit(base)
    # new data: 3 classes written as real video files
    from timesformer.data import write_synthetic

    root = write_synthetic(tmp_path / "files", 36, size=16, num_frames=8)
    subset = tmp_path / "subset"
    subset.mkdir()
    for name in ("grow", "shrink", "still_disc"):
        (subset / name).symlink_to(root / name)
    cfg = tiny_run(
        tmp_path,
        "ft",
        pretrained=str(tmp_path / "base" / "last"),
        freeze_backbone=True,
        data=dict(
            kind="folder",
            train=str(subset),
            val=str(subset),
            num_frames=8,
            sampling="segment",
            crop_size=16,
            scale=[16, 16],
            flip=False,
        ),
        optim=dict(epochs=2, batch_size=3),
    )
    fit(cfg, stop_after_epochs=1)
    result = fit(cfg, resume=True)  # a resumed fine-tune keeps its backbone frozen
    model = result["model"]
    assert model.head.out_features == 3 and model.config.labels == ("grow", "shrink", "still_disc")
    before, after = weights(tmp_path / "base"), weights(tmp_path / "ft")
    for k in before:
        if not k.startswith("head."):
            torch.testing.assert_close(before[k], after[k])  # the backbone did not move
    assert after["head.weight"].shape == (3, 32)


def test_resume_refuses_another_architecture_classes_or_data_naming_the_field(tmp_path):
    fit(tiny_run(tmp_path, optim=dict(epochs=1)))
    with pytest.raises(RunError, match=r"model_args.dim: the run has 32, this resume asks for 48"):
        fit(tiny_run(tmp_path, model_args=dict(dim=48, heads=3), optim=dict(epochs=2)), resume=True)
    with pytest.raises(RunError, match=r"data.synthetic_train: the run has 64, this resume asks for 32"):
        fit(tiny_run(tmp_path, data=dict(synthetic_train=32), optim=dict(epochs=2)), resume=True)
    with pytest.raises(RunError, match=r"optim.optimizer: the run has adamw, this resume asks for sgd"):
        fit(tiny_run(tmp_path, optim=dict(epochs=2, optimizer="sgd")), resume=True)
    # optimiser settings may change, and do: loading the optimiser's state does not bring the old ones back
    from timesformer.engine.distributed import Dist
    from timesformer.engine.loop import build_run

    run = build_run(
        tiny_run(tmp_path, optim=dict(epochs=2, weight_decay=0.3)), Dist(), torch.device("cpu"), resume=True
    )
    assert [g["weight_decay"] for g in run.optimizer.param_groups] == [0.3, 0.0]
    assert run.optimizer.state  # ... while its moments are the run's


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    """optim.compile: the same run compiled by inductor ends with the weights eager training reaches (fp32)."""
    import warnings

    opts = dict(epochs=1, precision="fp32")
    fit(tiny_run(tmp_path, "eager", optim=opts))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tiny_run(tmp_path, "compiled", optim={**opts, "compile": True}))
    assert not [w for w in caught if "optim.compile" in str(w.message)]  # it really ran compiled
    a, b = weights(tmp_path / "eager"), weights(tmp_path / "compiled")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-4, rtol=1e-3)


def test_a_failed_training_compile_warns_and_trains_eagerly(tmp_path, monkeypatch):
    class Broken(torch.nn.Module):  # what torch.compile returns, failing the way inductor does without a compiler
        def forward(self, *args):
            raise RuntimeError("InductorError: no working C++ compiler")

    monkeypatch.setattr(torch, "compile", lambda module: Broken())
    fit(tiny_run(tmp_path, "eager", optim=dict(epochs=1)))
    with pytest.warns(
        RuntimeWarning,
        match=r"optim.compile: torch.compile failed \(RuntimeError: InductorError: no "
        r"working C\+\+ compiler\); training eagerly",
    ):
        fit(tiny_run(tmp_path, "fallback", optim=dict(epochs=1, compile=True)))
    a, b = weights(tmp_path / "eager"), weights(tmp_path / "fallback")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the failed first call changed nothing


def test_an_error_after_the_first_compiled_step_is_not_a_compile_failure(tmp_path, monkeypatch):
    """A compiled forward that ran once at a shape and then fails is a real error: training stops with it rather
    than quietly going on eagerly (which would hide, say, a bad batch or a device fault)."""

    class FailsLater(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module, self.calls = module, 0

        def forward(self, *args):
            self.calls += 1
            if self.calls > 1:
                raise RuntimeError("device fault on step 2")
            return self.module(*args)

    monkeypatch.setattr(torch, "compile", lambda module: FailsLater(module))
    with pytest.raises(RuntimeError, match="device fault on step 2"):
        fit(tiny_run(tmp_path, "later", optim=dict(epochs=1, compile=True)))


def test_the_speed_layer_trains_to_the_reference_weights_and_says_so(tmp_path, caplog):
    """optim.fused (on by default) computes what the reference modules compute: one run each way, the same
    weights; the fused run logs one line of what it fused."""
    import logging

    with caplog.at_level(logging.INFO, logger="timesformer"):
        result = fit(tiny_run(tmp_path, "fused", model_args=dict(temporal_fc=True), optim=dict(epochs=1)))
    # what fit hands back runs its reference modules again, ready to be wrapped (LoRA, QAT) or hooked
    assert type(result["model"].blocks[0].temporal_fc) is torch.nn.Linear
    assert type(result["model"].blocks[0].mlp).__name__ == "Mlp"
    lines = [r.getMessage() for r in caplog.records if r.name == "timesformer.fused"]
    assert lines == ["fused layer: 1 MLPs, 1 temporal_fc folds, 2 CPU attention kernels"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="timesformer"):
        fit(tiny_run(tmp_path, "reference", model_args=dict(temporal_fc=True), optim=dict(epochs=1, fused=False)))
    assert not [r for r in caplog.records if r.name == "timesformer.fused"]
    a, b = weights(tmp_path / "fused"), weights(tmp_path / "reference")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
