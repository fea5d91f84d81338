"""Evaluation on labelled data: logits of every test view averaged per video, gathered across ranks, and the
metrics they give (top-1/top-5, per-class accuracy and confusion, or mAP for multi-label data); and
``evaluate_checkpoint``, a trained model on a labelled dataset end to end (what ``timesformer eval`` runs)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from ..errors import UserError
from . import distributed as distr
from .device import autocast, inference_device
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


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    clips: int = 1,
    crops: int = 1,
    sampling: str | None = None,
    sampling_rate: int | None = None,
    fps: float | None = None,
    decoder: str = "pyav",
    batch_size: int = 8,
    workers: int = 0,
    precision: str = "fp32",
    compile: bool = False,
    device: str = "auto",
    calibration_clips: int = 8,
    out: str | os.PathLike | None = None,
) -> dict:
    """Multi-view evaluation of a checkpoint on labelled videos; writes ``report.json`` (and ``confusion.png`` for
    single-label data) into :func:`report_folder` and returns the report.

    Args:
        checkpoint: anything ``load_pretrained`` reads.
        data: a ``VideoFolder`` root or a list file (its paths relative to ``root``). Its classes are matched to the
            checkpoint's by name when the checkpoint names them.
        clips, crops: test views per video (the paper: 1 x 3); their logits are averaged.
        sampling, sampling_rate, fps: the clip sampling; by default the protocol the checkpoint records.
        decoder: the video files' decoder, ``"pyav"`` or ``"torchcodec"`` (optional).
        precision, compile, device: the fast path (``timesformer.optimize``); int8 runs on the cpu, and with
            ``compile`` (static int8) sets its scales from the first ``calibration_clips`` clips of the data.

    Returns:
        ``{"checkpoint", "data", "views", "sampling", "videos", "top1", "top5", "per_class", "confusion",
        "bad_files"}`` (``"mAP"`` instead of the accuracies for multi-label data; ``"partial_files"`` when any).
    """
    from torch.utils.data import DataLoader

    from ..data import ClipSpec, VideoFolder, VideoList, bad_files_report, collate
    from ..fast import optimize
    from ..files import write_json_atomic
    from ..pretrained import load_pretrained

    device = inference_device(device, precision)  # before the model is loaded: a bad option is not a bad file
    model = load_pretrained(checkpoint)
    cfg = model.config
    spec = ClipSpec.from_config(cfg, clips=clips, crops=crops, sampling=sampling, sampling_rate=sampling_rate, fps=fps)
    spec = dataclasses.replace(spec, decoder=decoder)
    labels = list(cfg.labels) if cfg.labels else None  # the checkpoint's class order: the data is labelled by name
    dataset = (
        VideoFolder(data, spec=spec, train=False, classes=labels)
        if Path(data).is_dir()
        else VideoList(data, root=root, spec=spec, train=False, classes=labels)
    )
    if dataset.num_classes != cfg.num_classes:
        raise UserError(
            f"{data} has {dataset.num_classes} classes but the checkpoint has {cfg.num_classes} "
            f"(and names none to match them by)"
        )
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    fast = optimize(model, precision=precision, compile=compile, device=device)
    if fast.method == "int8-static":  # its scales come from the data it will see: the first batches' clips
        fast.calibrate(first_clips(loader, calibration_clips))
    logits, targets, bad = predict_views(fast, loader, device, "fp32")  # fp32: no autocast around the fast path
    summary = summarise(logits, targets, cfg.num_classes, dataset.multi_label, dataset.classes)
    report = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "views": f"{clips}x{crops}",
        "sampling": {k: getattr(spec, k) for k in ("sampling", "sampling_rate", "fps")},
        **summary,
        **bad_files_report(bad),
    }
    folder = report_folder(checkpoint, out)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "report.json", report)
    if "confusion" in summary:
        from ..viz import plot_confusion

        title = f"top-1 {summary['top1']:.1%} ({clips}x{crops} views)"
        plot_confusion(summary["confusion"], dataset.classes, folder / "confusion.png", title=title)
    return report


def report_folder(checkpoint: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Where ``evaluate_checkpoint`` writes: ``out``, else the checkpoint's folder (a folder checkpoint: the Hub card
    reads the report there), else the working folder."""
    if out is not None:
        return Path(out)
    return Path(checkpoint) if Path(checkpoint).is_dir() else Path(".")


def first_clips(loader, n: int):
    """The first ``n`` clips ``n t c H W`` a loader yields (batches of bad files only are passed over)."""
    batches = []
    for batch in loader:
        if batch["video"] is not None:
            batches.append(batch["video"])
        if sum(len(b) for b in batches) >= n:
            break
    return torch.cat(batches)[:n] if batches else []
