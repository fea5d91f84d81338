"""Parameter groups, optimizers and the learning-rate schedule."""

from __future__ import annotations

import copy
import math
import re

import torch
from torch import nn

from .config import OPTIMIZERS, SCHEDULES, check_choice


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """Weight decay on weight matrices only: not on norms, biases, or the model's ``no_weight_decay()`` names (cls
    token, position and time tables).

    ``layer_decay`` < 1 (BEiT's and VideoMAE's fine-tuning): each group gets an ``lr_scale``. Of ``depth`` blocks,
    block ``i`` (0-based) trains at ``layer_decay ** (depth - i)`` of the lr, the embeddings below them at
    ``layer_decay ** (depth + 1)``, the final norm and the head at 1: the pretrained features move least."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    depth = 1 + max((_block_index(name) for name, _ in named), default=-1)
    groups = {}  # (layer, decayed) -> group, in the order first seen
    for name, p in named:
        decayed = not (p.ndim < 2 or name in skip or name.split(".")[-1] in skip)
        layer = 0 if layer_decay == 1 else _layer(name, depth)
        group = groups.setdefault((layer, decayed), {"params": [], "weight_decay": weight_decay if decayed else 0.0})
        if layer_decay != 1:
            group["lr_scale"] = layer_decay ** (depth + 1 - layer)
        group["params"].append(p)
    if layer_decay == 1:  # two groups, decayed first, as ever
        return [groups.get((0, d), {"params": [], "weight_decay": weight_decay if d else 0.0}) for d in (True, False)]
    return [groups[key] for key in sorted(groups, key=lambda k: (k[0], not k[1]))]


def _block_index(name: str) -> int:
    """``i`` of a parameter inside ``blocks.i`` (also under a wrapper's prefix: peft's ``base_model.model.``)."""
    found = re.search(r"(?:^|\.)blocks\.(\d+)\.", name)
    return int(found.group(1)) if found else -1


def _layer(name: str, depth: int) -> int:
    """0: the embeddings; ``i + 1``: block ``i``; ``depth + 1``: what follows the blocks (final norm, head)."""
    block = _block_index(name)
    if block >= 0:
        return block + 1
    return depth + 1 if re.search(r"(?:^|\.)(?:norm|fc_norm|head)\.", name) else 0


def build_optimizer(
    model: nn.Module,
    *,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    layer_decay: float = 1.0,
    fused: bool | None = None,
):
    """AdamW or SGD (momentum, Nesterov). ``fused`` (default: on CUDA) picks torch's fused kernels: one launch for
    all parameters, and a step that can be skipped on the device (``can_skip_on_device``), so a non-finite step
    costs no host sync. The CPU default stays the per-tensor loop, whose results earlier runs reproduce. A group's
    ``lr_scale`` (``layer_decay``) multiplies the lr the schedule sets."""
    check_choice("optim.optimizer", name, OPTIMIZERS)
    groups = param_groups(model, weight_decay, layer_decay)
    if fused is None:
        fused = any(p.is_cuda for group in groups for p in group["params"])
    kw = {"fused": True} if fused else {}
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), **kw)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True, **kw)


def can_skip_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step()`` honours a ``found_inf`` tensor (torch's fused optimizers): where it is 1, the
    step leaves the weights and the optimizer's state (its step count too) as they were."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def step_unless(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> bool | None:
    """``optimizer.step()`` where ``skip`` (a bool tensor) is False. Decided on the device when the optimizer can
    (no sync; returns None), else on the host (returns whether it stepped)."""
    if not can_skip_on_device(optimizer):
        if bool(skip):
            return False
        optimizer.step()
        return True
    optimizer.grad_scale, optimizer.found_inf = None, skip.float()  # what GradScaler hands a fused optimizer
    try:
        optimizer.step()
    finally:
        del optimizer.grad_scale, optimizer.found_inf


def lr_at(step: int, *, base: float, total: int, warmup: int, min_lr: float = 0.0, schedule: str = "cosine") -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to ``min_lr`` at ``total`` (or constant). An unknown
    ``schedule`` is a ``RunError`` at any step, the warmup's too."""
    check_choice("optim.schedule", schedule, SCHEDULES)
    if step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant":
        return base
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of the weights (and buffers): ``module``, a frozen copy of the model on its
    device, evaluated and saved as the run's ``best``."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, skip: torch.Tensor | None = None):
        """Move the average towards ``model``'s weights; not at all where ``skip`` (a bool tensor on the device:
        the optimizer skipped its step) is True, decided on the device without a sync."""
        weights = {}  # lerp takes a tensor weight of the tensor's own dtype
        for mine, theirs in zip(self.module.state_dict().values(), model.state_dict().values()):
            if not mine.dtype.is_floating_point:
                mine.copy_(theirs)
                continue
            if mine.dtype not in weights:
                weights[mine.dtype] = 1 - self.decay if skip is None else (~skip).to(mine.dtype) * (1 - self.decay)
            mine.lerp_(theirs.detach(), weights[mine.dtype])

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict):
        """Loads onto the module's device, wherever ``state`` was read to."""
        self.module.load_state_dict(state)
