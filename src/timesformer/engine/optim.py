"""Parameter groups, optimizers and the learning-rate schedule."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .config import OPTIMIZERS, SCHEDULES, check_choice


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices only: not on norms, biases, or the model's ``no_weight_decay()``
    names (cls token, position and time tables)."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name in skip or name.split(".")[-1] in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(
    model: nn.Module, *, name: str, lr: float, weight_decay: float, momentum: float = 0.9, fused: bool | None = None
):
    """AdamW or SGD (momentum, Nesterov). ``fused`` (default: on CUDA) picks torch's fused kernels: one launch for
    all parameters, and a step that can be skipped on the device (``can_skip_on_device``), so a non-finite step
    costs no host sync. The CPU default stays the per-tensor loop, whose results earlier runs reproduce."""
    check_choice("optim.optimizer", name, OPTIMIZERS)
    groups = param_groups(model, weight_decay)
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
