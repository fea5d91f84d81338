"""Resume at any step: a run stopped by its time limit or killed (SIGKILL, also mid-checkpoint) and resumed ends
with the weights of a run that was never interrupted."""

import json
import random
import sys
import time
from pathlib import Path

import pytest
import torch

from timesformer.engine import checkpoint as ckpt
from timesformer.engine.loop import RunError, fit
from timesformer.engine.optim import lr_at
from timesformer.pretrained import read_state

from .helpers import cli, metrics, run, start, stop, tiny_run, wait_for, write_config

# dropout, drop path and an EMA: a resume that lost an RNG state or the EMA would show in the weights
NOISY = dict(
    model_args=dict(drop_rate=0.1, drop_path_rate=0.2, depth=2),
    optim=dict(epochs=2, ema_decay=0.9, batch_size=8, log_every=1),
)  # 64 clips / 8 = 8 steps an epoch


def noisy(tmp_path, name, **optim):
    return tiny_run(tmp_path, name, model_args=NOISY["model_args"], optim={**NOISY["optim"], **optim})


def assert_same_weights(a: Path, b: Path, tags=("last", "best")):
    for tag in tags:
        x, y = read_state(a / tag / "model.safetensors"), read_state(b / tag / "model.safetensors")
        assert x.keys() == y.keys()
        for k in x:
            torch.testing.assert_close(x[k], y[k], atol=1e-6, rtol=0, msg=f"{tag}/{k}")


def assert_logged_once(run_dir: Path, steps: int, epochs: int):
    """metrics.jsonl has every step and every epoch exactly once: lines written after the checkpoint that a
    resumed run started from were dropped, not repeated."""
    rows = metrics(run_dir)
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, steps + 1))
    assert [r["epoch"] for r in rows if "train_loss" in r] == list(range(1, epochs + 1))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    fit(noisy(out, "straight"))
    return out / "straight"


def test_time_limit_mid_epoch_then_resume_is_exact(tmp_path, straight):
    """max_minutes stops after the first step of every call: 16 calls, each resuming inside an epoch."""
    cfg = noisy(tmp_path, "stopped", max_minutes=1e-9)
    result = fit(cfg)
    assert result["step"] == 1 and result["epoch"] == 0  # stopped inside the first epoch, which is not done
    state = ckpt.load_state(ckpt.find_checkpoint(tmp_path / "stopped"))
    assert (state["epoch"], state["batch"], state["step"]) == (0, 1, 1)
    assert not any("train_loss" in r for r in metrics(tmp_path / "stopped"))  # no epoch was logged as done
    calls = 1
    while result["epoch"] < 2:
        result = fit(cfg, resume=True)
        calls += 1
    assert calls == 16 and result["step"] == 16
    fit(noisy(tmp_path, "quiet", max_minutes=1e-9, log_every=10))  # stopped before its first log line
    assert (tmp_path / "quiet" / "metrics.jsonl").read_text() == ""
    assert_same_weights(straight, tmp_path / "stopped")
    assert_logged_once(tmp_path / "stopped", 16, 2)


def test_resume_with_another_batch_size_continues_at_the_same_clip(tmp_path, straight):
    """Stopped 16 clips into epoch 1 at batch 8; resumed with steps of 4 clips x accum 4."""
    fit(noisy(tmp_path, "rebatched", max_minutes=1e-9))
    fit(noisy(tmp_path, "rebatched", max_minutes=1e-9), resume=True)
    with pytest.raises(
        RunError,
        match=r"optim.batch_size/accum_steps: the run stopped 16 clips into epoch 1, not a "
        r"whole number of steps of 12 x 1",
    ):
        fit(noisy(tmp_path, "rebatched", batch_size=12), resume=True)
    assert "batch_size: 8" in (tmp_path / "rebatched" / "config.yaml").read_text()  # a refused resume changes nothing
    result = fit(noisy(tmp_path, "rebatched", batch_size=4, accum_steps=4), resume=True)
    assert result["step"] == 2 + 3 + 4  # the other 48 clips of epoch 1 in steps of 16, then epoch 2's 64
    rows = metrics(tmp_path / "rebatched")
    assert [r["step"] for r in rows if "train_loss" in r] == [5, 9]
    # the schedule follows the data, not the step count: its last step is the schedule's last (of 8 at this batch)
    o = noisy(tmp_path, "x").optim
    assert rows[-2]["lr"] == lr_at(7, base=o.lr, total=8, warmup=o.warmup_steps, min_lr=o.min_lr, schedule=o.schedule)


RECIPE = dict(randaugment_n=2, randaugment_m=9, erase_prob=0.5, mixup=0.8, cutmix_share=0.5)


@pytest.mark.parametrize(
    "recipe",
    [{}, dict(RECIPE, augment_on="loader"), dict(RECIPE, augment_on="device")],
    ids=["jitter-crop-flip", "recipe-in-loader", "recipe-on-device"],
)
def test_mid_epoch_resume_with_loader_workers_and_augmentation_is_exact(tmp_path, recipe):
    """Real files decoded by 2 DataLoader workers, with scale jitter, random crops and flips; and with every
    augmentation of the fine-tuning recipe on (RandAugment, erasing, MixUp/CutMix), in the loader or the loop."""
    from timesformer.data import write_synthetic

    root = write_synthetic(tmp_path / "files", 24, size=32, num_frames=8)
    data = dict(
        kind="folder",
        train=str(root),
        num_frames=8,
        sampling="segment",
        crop_size=16,
        scale=[18, 28],
        flip=True,
        workers=2,
        **recipe,
    )

    def cfg(name, **optim):
        return tiny_run(tmp_path, name, data=data, optim=dict(batch_size=4, epochs=2, **optim))

    fit(cfg("straight"))
    fit(cfg("stopped", max_minutes=1e-9))  # after step 1 of 6
    fit(cfg("stopped"), resume=True)
    assert_same_weights(tmp_path / "straight", tmp_path / "stopped", tags=("last",))
    if recipe:  # and the recipe did something: without it the run ends elsewhere
        data.update(randaugment_n=0, erase_prob=0.0, mixup=0.0)
        fit(cfg("plain"))
        a, b = (read_state(tmp_path / name / "last" / "model.safetensors") for name in ("straight", "plain"))
        assert max(float((a[k] - b[k]).abs().max()) for k in a) > 1e-3


def test_a_resumed_run_records_its_own_sampling_protocol(tmp_path):
    """A run started by a version whose checkpoints recorded no protocol writes its own once resumed."""
    from timesformer.pretrained import load_pretrained

    cfg = tiny_run(tmp_path, optim=dict(epochs=2))
    fit(cfg, stop_after_epochs=1)
    config = tmp_path / "run" / "last" / "config.json"
    saved = json.loads(config.read_text())
    for key in ("sampling", "sampling_rate", "fps"):
        del saved["config"][key]
    config.write_text(json.dumps(saved))
    fit(cfg, resume=True)
    assert load_pretrained(tmp_path / "run" / "last").config.sampling == "segment"  # SyntheticMotion's


def hang_and_kill(tmp_path, where: str, n: int, args: list[str]):
    """Run the CLI until its n-th save of `last` hangs at `where`, then SIGKILL it there."""
    marker = tmp_path / f"hung-{where}"
    proc = start([sys.executable, "-m", "tests.engine.hang_in_save", where, str(n), str(marker), *args])
    try:
        wait_for(marker.exists, 120, f"the checkpoint write to hang ({where})", proc)
    finally:
        stop(proc)


def test_sigkill_inside_checkpoint_writes_then_resume_is_exact(tmp_path, straight):
    cfg = noisy(tmp_path, "killed", save_every_steps=1)
    args = ["train", "--config", str(write_config(cfg, tmp_path / "cfg.yaml"))]
    run_dir = tmp_path / "killed"
    # killed while writing its 3rd checkpoint: the weights are in last.tmp, state.pt is not; last is step 2
    hang_and_kill(tmp_path, "write", 3, args)
    assert (run_dir / "last.tmp" / "model.safetensors").exists() and not (run_dir / "last.tmp" / "state.pt").exists()
    assert ckpt.load_state(ckpt.find_checkpoint(run_dir))["step"] == 2
    # resumed, then killed between the two renames of its 4th save: only last.old (step 5) is complete
    hang_and_kill(tmp_path, "swap", 4, ["train", "--resume", str(run_dir)])
    assert not (run_dir / "last").exists() and ckpt.find_checkpoint(run_dir) == run_dir / "last.old"
    assert ckpt.load_state(run_dir / "last.old")["step"] == 5
    # resumed from last.old, then killed writing `best` at the end of epoch 1: `best` is written before `last`,
    # so `last` (step 7) does not yet claim the epoch's best score
    hang_and_kill(tmp_path, "write:best", 1, ["train", "--resume", str(run_dir)])
    assert not (run_dir / "best").exists() and ckpt.load_state(ckpt.find_checkpoint(run_dir))["step"] == 7
    proc = run(cli("train", "--resume", str(run_dir)), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "from last (epoch 1, step 7 of 16)" in proc.stderr
    assert_same_weights(straight, run_dir)
    assert_logged_once(run_dir, 16, 2)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_exact(tmp_path):
    """Kill -9 at seeded random moments -- during startup, or 1 to 8 steps further on plus up to one step's time
    (inside a step, validation or a checkpoint write) -- eight times, then let the run get to the end."""

    def longer(name, **optim):  # 192 clips: 24 steps an epoch, 48 in all
        cfg = noisy(tmp_path, name, **optim)
        cfg.data.synthetic_train = 192
        return cfg

    fit(longer("straight"))
    config = str(write_config(longer("random", save_every_steps=1), tmp_path / "cfg.yaml"))
    run_dir, rng, kills = tmp_path / "random", random.Random(0), 0

    def logged():
        return max((r["step"] for r in metrics(run_dir) if "loss" in r), default=0)

    while True:
        resumable = ckpt.find_checkpoint(run_dir) is not None
        proc = start(
            cli("train", "--resume", str(run_dir)) if resumable else cli("train", "--config", config, "--overwrite")
        )
        if kills == 8:
            break
        if rng.random() < 0.2:
            time.sleep(rng.uniform(0.2, 1.5))  # starting up, maybe writing config.yaml
        else:
            target = logged() + rng.randint(1, 8)
            wait_for(lambda: logged() >= target or proc.poll() is not None, 120, f"step {target}")
            time.sleep(rng.uniform(0, 0.06))
        stop(proc)
        kills += 1
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert_same_weights(tmp_path / "straight", run_dir)
    assert_logged_once(run_dir, 48, 2)


def test_auto_resume_continues_or_starts_and_restarts_need_it(tmp_path, monkeypatch):
    """What torchrun --max-restarts and preempted jobs rerun: the same command, with --auto-resume."""
    cfg = noisy(tmp_path, "job", max_minutes=1e-9)
    assert fit(cfg, resume="auto")["step"] == 1  # nothing there: it starts
    assert fit(cfg, resume="auto")["step"] == 2  # a checkpoint: it continues
    (tmp_path / "died_early").mkdir()
    (tmp_path / "died_early" / "config.yaml").write_text("name: died_early\n")  # no checkpoint
    assert fit(noisy(tmp_path, "died_early", max_minutes=1e-9), resume="auto")["step"] == 1
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    with pytest.raises(RunError, match="torchrun restart 1: pass --auto-resume so that restarts continue the run"):
        fit(cfg)
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "2")
    with pytest.raises(RunError, match="--overwrite under torchrun --max-restarts would wipe the run at every"):
        fit(cfg, overwrite=True)
    assert ckpt.load_state(tmp_path / "job" / "last")["step"] == 2  # still there
