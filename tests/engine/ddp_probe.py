"""``torchrun --nproc_per_node 2 -m tests.engine.ddp_probe OUT``: one epoch of ``train_one_epoch`` with
``accum_steps=2``, DDP's gradient all-reduces counted by a comm hook. Each rank saves to ``OUT/rank<r>.pt`` its
first draws from the global RNG (what dropout and drop path use), the buckets reduced, its steps and its weights."""

import sys

import torch
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from timesformer.engine import distributed as distr

from .helpers import tiny_run


def probe_config(out):
    # 64 clips, global micro-batch 8 (4 a rank): 8 micro-batches, 4 optimiser steps
    return tiny_run(out, "probe", optim=dict(accum_steps=2, batch_size=8, epochs=1))


def main(out: str):
    from timesformer.engine.loop import build_run, train_one_epoch

    device = torch.device("cpu")
    d = distr.setup(device)
    run = build_run(probe_config(out), d, device)
    with torch.random.fork_rng():
        draws = torch.rand(4)
    reduced = []

    def counting_allreduce(state, bucket):
        reduced.append(bucket.index())
        return default_hooks.allreduce_hook(None, bucket)

    run.train_model.register_comm_hook(None, counting_allreduce)
    train_one_epoch(run)
    torch.save(
        {"draws": draws, "reduced": reduced, "steps": run.pos.step, "state": run.model.state_dict()},
        f"{out}/rank{d.rank}.pt",
    )
    distr.teardown(d)


if __name__ == "__main__":
    main(sys.argv[1])
