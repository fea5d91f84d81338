"""Several processes (torchrun, gloo): no rank ever waits alone, accumulation syncs once a step, randomness is per
rank, and an elastic restart after a killed worker resumes exactly."""

import os
import signal

import torch

from timesformer.data import write_synthetic
from timesformer.engine import checkpoint as ckpt
from timesformer.engine import distributed as distr
from timesformer.pretrained import read_state

from .ddp_probe import probe_config
from .helpers import children, free_port, metrics, run, start, stop, tiny_run, torchrun, wait_for, write_config


def test_unreadable_file_alone_in_one_ranks_batch_neither_hangs_nor_goes_unreported(tmp_path):
    root = write_synthetic(tmp_path / "files", 11, size=16, num_frames=8)
    broken = root / "move_left" / "zz_broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(200))
    # 12 files, global batch 2 = 1 per rank: the broken file is the whole batch of one rank at one step
    cfg = tiny_run(
        tmp_path,
        "bad",
        data=dict(
            kind="folder", train=str(root), num_frames=8, sampling="segment", crop_size=16, scale=[16, 16], flip=False
        ),
        optim=dict(batch_size=2, epochs=1),
    )
    proc = run(torchrun(2, "train", "--config", str(write_config(cfg, tmp_path / "cfg.yaml"))), timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    epoch = [r for r in metrics(tmp_path / "bad") if "train_loss" in r]
    assert epoch[0]["bad_files"] == [str(broken)] and epoch[0]["step"] == 6
    assert f"1 bad file(s) (unreadable: skipped; partial: frames past the break masked): {broken}" in proc.stderr


def test_accumulation_syncs_once_a_step_equals_one_process_and_draws_per_rank(tmp_path):
    """Drives the loop's parts (build_run, train_one_epoch) directly under torchrun."""
    proc = run(torchrun(2, str(tmp_path / "ddp"), module="tests.engine.ddp_probe"), timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    buckets = len(set(ranks[0]["reduced"]))
    assert ranks[0]["steps"] == 4
    assert len(ranks[0]["reduced"]) == 4 * buckets, "gradients all-reduced on micro-steps that don't step (no_sync)"
    assert not torch.equal(ranks[0]["draws"], ranks[1]["draws"]), "dropout draws the same on every rank"
    for k, v in ranks[0]["state"].items():
        torch.testing.assert_close(v, ranks[1]["state"][k], atol=0, rtol=0)

    from timesformer.engine.loop import build_run, train_one_epoch

    single = build_run(probe_config(tmp_path / "one"), distr.Dist(), torch.device("cpu"))
    train_one_epoch(single)
    assert single.pos.step == 4
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(ranks[0]["state"][k], v, atol=1e-5, rtol=0)


def test_elastic_restart_after_a_killed_worker_resumes_exactly(tmp_path):
    cfg = tiny_run(
        tmp_path,
        "run",
        model_args=dict(drop_path_rate=0.2, depth=2),
        data=dict(synthetic_train=128),
        optim=dict(batch_size=8, epochs=2, save_every_steps=3),
    )
    config = str(write_config(cfg, tmp_path / "cfg.yaml"))  # 16 steps an epoch, 32 in all
    proc = run(torchrun(2, "train", "--config", config, "name=straight"), timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    rdzv = [
        "--nnodes",
        "1",
        "--max-restarts",
        "2",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"localhost:{free_port()}",
        "--monitor-interval",
        "0.1",
    ]
    agent = start(torchrun(2, "train", "--config", config, "name=elastic", "--auto-resume", rdzv=rdzv))
    try:
        # a worker dies mid-epoch, after `last` was written mid-epoch at step 3 (and maybe 6)
        wait_for(lambda: len([r for r in metrics(tmp_path / "elastic") if "loss" in r]) >= 5, 180, "step 5", agent)
        victim = children(agent.pid)[-1]
        os.kill(victim, signal.SIGKILL)
        out, err = agent.communicate(timeout=240)
    finally:
        stop(agent)
    assert agent.returncode == 0, err[-3000:]
    assert "torchrun restart 1: resuming" in err
    state = ckpt.load_state(tmp_path / "elastic" / "last")
    assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0]["cpu"], state["rng"][1]["cpu"])
    a, b = (read_state(tmp_path / name / "last" / "model.safetensors") for name in ("straight", "elastic"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    rows = metrics(tmp_path / "elastic")
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 33))
    assert rows[-1]["epoch"] == 2


def test_a_checkpoint_rank_0_cannot_write_stops_every_rank_with_the_reason(tmp_path):
    """A full disk on rank 0: the other rank must not wait alone in its next collective, nor die of a closed
    connection without saying why."""
    cfg = tiny_run(tmp_path, "full", optim=dict(batch_size=8, epochs=1, save_every_steps=2))
    proc = run(
        torchrun(
            2,
            "fail",
            "2",
            str(tmp_path / "failed"),
            "train",
            "--config",
            str(write_config(cfg, tmp_path / "cfg.yaml")),
            module="tests.engine.hang_in_save",
        ),
        timeout=180,
    )
    assert proc.returncode != 0
    reason = f"timesformer train: error: saving last in {tmp_path / 'full'}: [Errno 28] No space left on device"
    assert proc.stderr.count(reason) == 2, proc.stderr[-3000:]  # said by both ranks
