"""torchrun / DDP plumbing: one process per device, gloo on CPU and NCCL on GPU.

Every collective here is called by all ranks at the same point of the loop; ``any_across`` is how ranks agree on
a decision (skip a batch, stop), so none of them ever waits alone in a collective the others have left. Those
decisions are host values: they travel on a CPU (gloo) group, so agreeing on one never waits for the GPU.
"""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import UserError

log = logging.getLogger(__name__)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    control: object = None  # the process group host decisions travel on (gloo); None: the default group is gloo

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(device: torch.device) -> Dist:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, rendezvous env)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        store = _attempt_store(world)
        if store is None:
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(backend=backend, store=store, rank=int(os.environ["RANK"]), world_size=world)
    # NCCL moves device tensors only: a host flag sent through it would cost a copy to the GPU and a sync back
    control = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    return Dist(
        rank=dist.get_rank(),
        world=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        control=control,
    )


def _attempt_store(world: int):
    """torchrun's store under a prefix for this attempt, or None for the default rendezvous.

    Workers share torchrun's store server, and it outlives a restart with the previous attempt's keys in it: a
    restarted rank could read its dead peer's address before the new peer has written its own, and fail to
    connect (seen here in 3 of 5 elastic restarts with gloo). With one torchrun agent, its restart count names
    the attempt. Several agents count restarts each for itself, so there the fix is torchrun's own: a fresh
    store each round, with ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    if os.environ.get("GROUP_WORLD_SIZE", "1") != "1":
        if int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0 and os.environ.get("RANK") == "0":
            log.warning(
                "torchrun shares its rendezvous store across restarts, where a restarted worker can read a "
                "dead peer's address: set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 for torchrun on every machine"
            )
        return None
    from torch.distributed.constants import default_pg_timeout

    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size=world,
        is_master=False,
        timeout=default_pg_timeout,
    )
    return dist.PrefixStore(f"timesformer/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def barrier(d: Dist):
    if d.enabled:
        dist.barrier()


def teardown(d: Dist):
    """Leave the process group. Objects holding collective work (a DDP wrapper) must be released first: destroyed
    later, during interpreter shutdown, gloo's threads abort the process (SIGABRT, seen ~1 run in 20 here)."""
    if d.enabled and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def mean_across(d: Dist, value: torch.Tensor) -> torch.Tensor:
    if not d.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / d.world


def any_across(d: Dist, *flags: bool) -> list[bool]:
    """Each host flag, true if it is true on any rank: one all-reduce on the CPU group, the same answer
    everywhere."""
    if not d.enabled:
        return [bool(f) for f in flags]
    t = torch.tensor([float(bool(f)) for f in flags])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=d.control)
    return [bool(v) for v in t.tolist()]


def average_gradients(d: Dist, params) -> None:
    """What DDP's backward would have done: the mean of every gradient across ranks (for gradients accumulated
    under ``no_sync`` whose final, synchronising micro-batch was skipped on every rank)."""
    if not d.enabled:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(d.world)


def broadcast_object(d: Dist, obj):
    """Rank 0's ``obj`` on every rank."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(d: Dist, obj) -> list:
    if not d.enabled:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


class EpochSampler(torch.utils.data.Sampler):
    """One global permutation per epoch (seeded by ``seed + epoch``), cut into ``batches`` global batches; rank
    ``r`` of ``W`` takes the ``r``-th slice of every global batch. So W processes with per-rank batch B/W see,
    step for step, exactly the batch one process with batch B sees (the DDP equality the tests check), and
    ``set_epoch(e, start_batch=k)`` continues epoch ``e`` at its ``k``-th global batch (a resumed run).

    Args:
        batches: global batches an epoch (default: all full ones); the loop passes a multiple of ``accum_steps``
            so that no micro-batch is left over at the end of an epoch.
    """

    def __init__(
        self, n: int, *, global_batch: int, d: Dist, seed: int, shuffle: bool = True, batches: int | None = None
    ):
        if global_batch % d.world:
            raise UserError(f"optim.batch_size {global_batch} must be divisible by the {d.world} processes")
        self.n, self.global_batch, self.d, self.seed, self.shuffle = n, global_batch, d, seed, shuffle
        self.batches = n // global_batch if batches is None else min(batches, n // global_batch)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0):
        self.epoch, self.start = epoch, start_batch

    def __len__(self):
        return max(self.batches - self.start, 0) * (self.global_batch // self.d.world)

    def __iter__(self):
        order = (
            torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
            if self.shuffle
            else list(range(self.n))
        )
        per = self.global_batch // self.d.world
        for b in range(self.start, self.batches):
            start = b * self.global_batch + self.d.rank * per
            yield from order[start : start + per]


class ShardSampler(torch.utils.data.Sampler):
    """Evaluation: rank ``r`` takes items ``r, r + W, ...`` (every item once across ranks)."""

    def __init__(self, n: int, d: Dist):
        self.n, self.d = n, d

    def __len__(self):
        return len(range(self.d.rank, self.n, self.d.world))

    def __iter__(self):
        return iter(range(self.d.rank, self.n, self.d.world))
