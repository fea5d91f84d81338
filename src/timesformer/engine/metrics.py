"""Classification metrics on aggregated per-video logits."""

from __future__ import annotations

import torch


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Fraction of rows whose label is among the ``k`` highest logits (``k`` capped at the class count)."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(1).float().mean().item()


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``num_classes x num_classes`` counts: row = true class, column = predicted."""
    return torch.bincount(labels * num_classes + preds, minlength=num_classes**2).view(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> list[float]:
    totals = confusion.sum(1)
    return [(confusion[i, i] / totals[i]).item() if totals[i] else float("nan") for i in range(len(totals))]


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Multi-label mAP: the mean over classes with at least one positive of average precision."""
    aps = []
    for c in range(scores.shape[1]):
        positives = targets[:, c] > 0
        if not positives.any():
            continue
        order = scores[:, c].argsort(descending=True)
        hits = positives[order].float()
        precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1)
        aps.append((precision * hits).sum().item() / hits.sum().item())
    return sum(aps) / len(aps) if aps else float("nan")


def direction_accuracy(logits: torch.Tensor, labels: torch.Tensor, pairs) -> float:
    """For clips whose class has a time-reversed twin: how often the true class scores above its twin
    (chance: 50 %)."""
    twin = {a: b for a, b in pairs} | {b: a for a, b in pairs}
    rows = [i for i, y in enumerate(labels.tolist()) if y in twin]
    if not rows:
        return float("nan")
    wins = [logits[i, labels[i]] > logits[i, twin[int(labels[i])]] for i in rows]
    return torch.stack(wins).float().mean().item()
