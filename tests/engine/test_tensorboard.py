"""TensorBoard (the ``tensorboard`` extra): the run's event files hold what metrics.jsonl holds -- the training
loss and lr every log step, the validation scores every epoch -- at the same steps and values."""

import pytest

from timesformer.engine.loop import fit

from .helpers import metrics, tiny_run

pytest.importorskip("tensorboard")


def test_event_files_hold_the_loss_lr_and_validation_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fit(tiny_run(tmp_path, optim=dict(epochs=2, log_every=2)))
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "lr", "grad_norm", "train_loss", "top1", "top5"} <= tags
    records = metrics(tmp_path / "run")
    for tag in ("loss", "lr", "top1"):
        logged = [(r["step"], r[tag]) for r in records if tag in r]
        written = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in written] == [s for s, _ in logged] and len(logged) >= 2
        assert [v for _, v in written] == pytest.approx([v for _, v in logged], rel=1e-6)
