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


def build_optimizer(model: nn.Module, *, name: str, lr: float, weight_decay: float, momentum: float = 0.9):
    check_choice("optim.optimizer", name, OPTIMIZERS)
    groups = param_groups(model, weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)


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
    def update(self, model: nn.Module):
        for mine, theirs in zip(self.module.state_dict().values(), model.state_dict().values()):
            if mine.dtype.is_floating_point:
                mine.mul_(self.decay).add_(theirs.detach(), alpha=1 - self.decay)
            else:
                mine.copy_(theirs)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict):
        """Loads onto the module's device, wherever ``state`` was read to."""
        self.module.load_state_dict(state)
