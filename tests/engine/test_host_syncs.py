"""The training hot path never reads a tensor on the host: losses, the gradient norm and skip decisions stay on the
device until ``log_every`` or the epoch's end. Counted on the CPU, where every read a GPU would wait on --
``.item()``, ``bool()``, ``float()`` (all ``aten._local_scalar_dense``) and ``.tolist()`` -- is still visible."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from timesformer.engine import distributed as distr
from timesformer.engine import loop
from timesformer.engine.optim import build_optimizer

from .helpers import metrics, tiny_run


class HostReads(TorchDispatchMode):
    """Counts the tensor reads to the host made in this process (data loading runs in a worker: not counted)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture
def count_tolist(monkeypatch):
    reads = []
    real = torch.Tensor.tolist

    def tolist(self):
        reads.append(1)
        return real(self)

    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    return reads


def host_reads(tmp_path, monkeypatch, tolist_reads, *, steps: int, log_every: int, fused: bool, **optim) -> int:
    """Host reads in one training epoch of ``steps`` optimiser steps."""
    monkeypatch.setattr(loop, "build_optimizer", lambda model, **kw: build_optimizer(model, fused=fused, **kw))
    cfg = tiny_run(
        tmp_path / f"{steps}-{log_every}-{fused}",
        data=dict(synthetic_train=8 * steps * optim.get("accum_steps", 1), workers=1),
        optim=dict(batch_size=8, epochs=1, log_every=log_every, **optim),
    )
    run = loop.build_run(cfg, distr.Dist(), torch.device("cpu"))
    tolist_reads.clear()
    with HostReads() as reads:
        assert loop.train_one_epoch(run)
    return reads.count + len(tolist_reads)


@pytest.mark.parametrize(
    "optim", [{}, dict(accum_steps=2, clip_grad=0.5, ema_decay=0.9)], ids=["plain", "accum-clip-ema"]
)
def test_no_host_read_per_step_with_a_fused_optimizer(tmp_path, monkeypatch, count_tolist, optim):
    short = host_reads(tmp_path, monkeypatch, count_tolist, steps=2, log_every=100, fused=True, **optim)
    long = host_reads(tmp_path, monkeypatch, count_tolist, steps=6, log_every=100, fused=True, **optim)
    assert long == short  # the epoch's end reads once, however many steps it had
    assert short <= 3  # once an epoch, CPU values: the loader's seed, the epoch's order, the end's flush
    logged = host_reads(tmp_path, monkeypatch, count_tolist, steps=6, log_every=2, fused=True, **optim)
    assert logged == long + 2  # a read at steps 2 and 4 (6 is the end's)


def test_fused_and_per_tensor_optimizers_log_the_same_run(tmp_path, monkeypatch):
    """The device-side skip changes when the host learns of a step, not what is logged: the same records (to the
    optimizers' rounding), the same skipped step, the same checkpointed position."""
    records = {}
    for fused in (False, True):
        monkeypatch.setattr(
            loop, "build_optimizer", lambda model, fused=fused, **kw: build_optimizer(model, fused=fused, **kw)
        )
        real = loop._forward_backward
        calls = []

        def poisoned(run, batch, *, sync, real=real, calls=calls):
            calls.append(1)
            loss = real(run, batch, sync=sync)
            return loss * float("nan") if len(calls) == 3 else loss

        monkeypatch.setattr(loop, "_forward_backward", poisoned)
        result = loop.fit(tiny_run(tmp_path / str(fused), optim=dict(skip_nonfinite=1, log_every=2, ema_decay=0.5)))
        assert result["step"] == 8
        records[fused] = metrics(tmp_path / str(fused) / "run")
    plain, fused = records[False], records[True]
    assert [r for r in fused if "skipped" in r] == [{"step": 3, "epoch": 1, "skipped": "non-finite loss (nan)"}]
    assert [sorted(r) for r in plain] == [sorted(r) for r in fused]
    for a, b in zip(plain, fused):
        for key in ("loss", "train_loss", "grad_norm"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4), key


def test_a_step_with_no_data_between_log_lines_moves_on(tmp_path):
    """Every micro-batch of a step unreadable (all its files bad), at a step that writes no log line."""
    run = loop.build_run(tiny_run(tmp_path, optim=dict(log_every=1000)), distr.Dist(), torch.device("cpu"))
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    loop._optimizer_step(run, loop._Accumulated())
    assert run.pos.step == 1 and run.pending[-1].losses is None
    loop._flush(run)
    assert run.pos.loss_count == 0 and run.pos.skipped == 0
    assert all(torch.equal(v, run.model.state_dict()[k]) for k, v in before.items())
