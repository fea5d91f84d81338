"""Evaluation on labelled data: logits of every test view averaged per video, gathered across ranks, and the
metrics they give (top-1/top-5, per-class accuracy and confusion, or mAP for multi-label data)."""

from __future__ import annotations

import torch

from . import distributed as distr
from .device import autocast
from .metrics import confusion_matrix, mean_average_precision, per_class_accuracy, topk_accuracy


@torch.no_grad()
def predict_views(model, loader, device: torch.device, precision: str, d: distr.Dist = distr.Dist()):
    """Logits of every view, aggregated per video (mean over views), gathered across ranks:
    ``(index -> logits), (index -> label)``, plus the bad files met as ``(path, error)``."""
    model.eval()
    sums, counts, labels, bad = {}, {}, {}, []
    for batch in loader:
        bad += batch["bad"]
        if batch["video"] is None:
            continue
        video, mask = batch["video"].to(device), batch["mask"].to(device)
        with autocast(device, precision):
            logits = model(video, None if bool(mask.all()) else mask).float().cpu()
        for i, idx in enumerate(batch["index"].tolist()):
            sums[idx] = sums.get(idx, 0) + logits[i]
            counts[idx] = counts.get(idx, 0) + 1
            labels[idx] = batch["label"][i]
    parts = distr.gather_objects(d, (sums, counts, labels, bad))
    sums, counts, labels, bad = {}, {}, {}, []
    for s, c, lab, b in parts:
        for k in s:
            sums[k] = sums.get(k, 0) + s[k]
            counts[k] = counts.get(k, 0) + c[k]
            labels[k] = lab[k]
        bad += b
    return {k: sums[k] / counts[k] for k in sums}, labels, bad


def summarise(logits: dict, labels: dict, num_classes: int, multi_label: bool, class_names=None) -> dict:
    """Metrics of per-video ``logits`` against ``labels`` (both keyed by video index)."""
    keys = sorted(logits)
    if not keys:
        return {"videos": 0}
    scores = torch.stack([logits[k] for k in keys])
    if multi_label:
        targets = torch.stack([torch.as_tensor(labels[k]) for k in keys])
        return {"videos": len(keys), "mAP": mean_average_precision(scores.sigmoid(), targets)}
    y = torch.tensor([int(labels[k]) for k in keys])
    cm = confusion_matrix(scores.argmax(1), y, num_classes)
    return {
        "videos": len(keys),
        "top1": topk_accuracy(scores, y, 1),
        "top5": topk_accuracy(scores, y, 5),
        "per_class": dict(zip(class_names or range(num_classes), per_class_accuracy(cm))),
        "confusion": cm.tolist(),
    }
