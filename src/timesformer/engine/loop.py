"""Training and evaluation loops: ``fit(run_config)`` and ``evaluate(model, loader)``."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..data import ClipSpec, SyntheticMotion, VideoFolder, VideoList, collate
from ..convert.common import check_state
from ..model import TimeSformer, create_model, get_config
from . import distributed as distr
from .checkpoint import find_checkpoint, load_state, save_checkpoint, write_json_atomic
from .config import RunConfig, to_dict
from .metrics import confusion_matrix, mean_average_precision, per_class_accuracy, topk_accuracy
from .optim import EMA, build_optimizer, lr_at

log = logging.getLogger(__name__)


class RunError(ValueError):
    """Bad run set-up (existing folder, data/model mismatch ...): the CLI prints it and exits 2."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RunError("optim.device=cuda but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise RunError(f"optim.device must be auto, cpu or cuda; got {name!r}")
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        if device.type != "cuda":
            raise RunError("optim.precision=fp16 needs CUDA (use bf16 on CPU)")
        return torch.autocast("cuda", dtype=torch.float16)
    raise RunError(f"optim.precision must be fp32, bf16 or fp16; got {precision!r}")


# --- data --------------------------------------------------------------------------------------------------
def clip_spec(cfg: RunConfig, model_cfg) -> ClipSpec:
    d = cfg.data
    return ClipSpec(num_frames=d.num_frames, sampling=d.sampling, sampling_rate=d.sampling_rate, fps=d.fps,
                    crop_size=d.crop_size, scale=tuple(d.scale), flip=d.flip, num_clips=d.num_clips,
                    num_crops=d.num_crops, mean=tuple(model_cfg.mean), std=tuple(model_cfg.std))


def build_datasets(cfg: RunConfig, model_cfg):
    d = cfg.data
    if d.kind == "synthetic":
        kw = dict(num_frames=d.num_frames, size=d.synthetic_size, seed=cfg.optim.seed, mean=model_cfg.mean,
                  std=model_cfg.std)
        return SyntheticMotion(d.synthetic_train, split="train", **kw), SyntheticMotion(d.synthetic_val, split="val",
                                                                                         **kw)
    spec = clip_spec(cfg, model_cfg)
    if d.kind not in ("folder", "list"):
        raise RunError(f"data.kind must be synthetic, folder or list; got {d.kind!r}")
    if not d.train:
        raise RunError(f"data.kind={d.kind} needs data.train (a folder or a list file)")

    def make(path, train):
        if d.kind == "folder":
            return VideoFolder(path, spec=spec, train=train, seed=cfg.optim.seed)
        return VideoList(path, root=d.root, spec=spec, train=train, seed=cfg.optim.seed)
    train = make(d.train, True)
    val = make(d.val, False) if d.val else None
    if val is not None and val.classes != train.classes:
        raise RunError(f"{d.val}: its classes differ from {d.train}'s ({len(val.classes)} vs {len(train.classes)})")
    return train, val


# --- evaluation --------------------------------------------------------------------------------------------
@torch.no_grad()
def predict_views(model, loader, device, precision: str, d: distr.Dist = distr.Dist()):
    """Logits of every view, aggregated per video (mean over views), gathered across ranks:
    ``(index -> logits), (index -> label)``, plus the bad files met."""
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
    keys = sorted(logits)
    if not keys:
        return {"videos": 0}
    scores = torch.stack([logits[k] for k in keys])
    if multi_label:
        targets = torch.stack([torch.as_tensor(labels[k]) for k in keys])
        return {"videos": len(keys), "mAP": mean_average_precision(scores.sigmoid(), targets)}
    y = torch.tensor([int(labels[k]) for k in keys])
    cm = confusion_matrix(scores.argmax(1), y, num_classes)
    out = {"videos": len(keys), "top1": topk_accuracy(scores, y, 1), "top5": topk_accuracy(scores, y, 5),
           "per_class": dict(zip(class_names or range(num_classes), per_class_accuracy(cm))),
           "confusion": cm.tolist()}
    return out


# --- training ----------------------------------------------------------------------------------------------
def _prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool, main: bool):
    if resume:
        if find_checkpoint(run_dir) is None:
            raise RunError(f"{run_dir}: nothing to resume (no complete 'last' checkpoint)")
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise RunError(f"{run_dir} already exists; pass --resume to continue it or --overwrite to start over")
        if main:
            import shutil

            shutil.rmtree(run_dir)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)


def build_model(cfg: RunConfig, classes: list[str], pretrained: TimeSformer | None = None) -> TimeSformer:
    """The run's model: ``pretrained`` (already loaded from ``cfg.pretrained``) with a head for ``classes``, or a
    fresh preset."""
    labels = tuple(classes)
    if cfg.pretrained:
        from ..pretrained import load_pretrained

        model = pretrained if pretrained is not None else load_pretrained(cfg.pretrained, **cfg.model_args)
        if model.config.num_classes != len(labels) or model.config.labels != labels:
            model.reset_classifier(len(labels), labels=labels)
        if cfg.freeze_backbone:
            for name, p in model.named_parameters():
                p.requires_grad = name.startswith("head.")
        return model
    try:
        model = create_model(cfg.model, **{**cfg.model_args, "num_classes": len(labels), "labels": labels})
    except ValueError as err:
        raise RunError(f"model: {err}") from None
    if "num_classes" in cfg.model_args and cfg.model_args["num_classes"] != len(labels):
        raise RunError(f"model_args.num_classes={cfg.model_args['num_classes']} contradicts the data, which has "
                       f"{len(labels)} classes")
    return model


def fit(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False, progress=None,
        stop_after_epochs: int | None = None) -> dict:
    """Train (and validate every epoch) as ``cfg`` says; returns the last validation metrics.

    Args:
        resume: continue ``<out>/<name>`` from its last checkpoint, exactly.
        overwrite: replace an existing run folder.
        progress: ``callable(step, total, postfix)`` for a progress bar (rank 0 only).
        stop_after_epochs: end after this many epochs of this call (tests simulate an interruption).
    """
    o = cfg.optim
    device = pick_device(o.device)
    d = distr.setup(device)
    if d.enabled and device.type == "cuda":
        torch.cuda.set_device(d.local_rank)
        device = torch.device("cuda", d.local_rank)
    run_dir = Path(cfg.out) / cfg.name
    try:
        _prepare_run_dir(run_dir, resume, overwrite, d.main)
        if d.enabled:
            torch.distributed.barrier()
        torch.manual_seed(o.seed)
        loaded = _load_pretrained(cfg) if cfg.pretrained else None  # once: its config shapes the data too
        model_cfg_for_data = loaded.config if loaded is not None else _preset_config(cfg)
        train_set, val_set = build_datasets(cfg, model_cfg_for_data)
        classes = list(train_set.classes)
        if len(train_set) < o.batch_size:
            raise RunError(f"data.train has {len(train_set)} clips, fewer than one batch of {o.batch_size}")
        torch.manual_seed(o.seed)
        model = build_model(cfg, classes, loaded).to(device)
        model.set_grad_checkpointing(o.grad_checkpointing)
        multi = bool(getattr(train_set, "multi_label", False))
        optimizer = build_optimizer(model, name=o.optimizer, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum)
        ema = EMA(model, o.ema_decay) if o.ema_decay > 0 else None
        scaler = torch.amp.GradScaler("cuda") if o.precision == "fp16" else None
        train_model = torch.nn.parallel.DistributedDataParallel(model) if d.enabled else model

        sampler = distr.EpochSampler(len(train_set), global_batch=o.batch_size, d=d, seed=o.seed)
        loader = DataLoader(train_set, batch_size=o.batch_size // d.world, sampler=sampler, num_workers=cfg.data.workers,
                            collate_fn=collate, persistent_workers=cfg.data.workers > 0)
        val_loader = None
        if val_set is not None:
            val_loader = DataLoader(val_set, batch_size=max(o.batch_size // d.world, 1),
                                    sampler=distr.ShardSampler(len(val_set), d), num_workers=cfg.data.workers,
                                    collate_fn=collate)
        steps_per_epoch = len(sampler) // (o.batch_size // d.world) // o.accum_steps
        total_steps = steps_per_epoch * o.epochs

        epoch, step, best = 0, 0, -math.inf
        if resume:
            folder = find_checkpoint(run_dir)
            from ..pretrained import read_state

            saved = read_state(folder / "model.safetensors")
            check_state(model, saved, str(folder))  # another architecture: one clear error, nothing loaded
            model.load_state_dict(saved)
            state = load_state(folder)
            optimizer.load_state_dict(state["optimizer"])
            epoch, step, best = state["epoch"], state["step"], state["best"]
            if ema is not None and "ema" in state:
                ema.shadow = state["ema"]
            torch.set_rng_state(state["rng"][d.rank] if d.rank < len(state["rng"]) else state["rng"][0])
        if d.main:
            (run_dir / "config.yaml").write_text(_yaml(to_dict(cfg)))
            write_json_atomic(run_dir / "classes.json", classes)
        metrics_path = run_dir / "metrics.jsonl"
        board = _tensorboard(run_dir) if d.main else None

        def log_line(record):
            if d.main:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                    f.flush()
                if board is not None:
                    for key, value in record.items():
                        if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                            board.add_scalar(key, value, record.get("step", 0))

        start_time, last = time.time(), {}
        epochs_run = 0
        while epoch < o.epochs:
            sampler.set_epoch(epoch)
            if hasattr(train_set, "set_epoch"):
                train_set.set_epoch(epoch)
            train_model.train()
            bad, seen, t0 = [], 0, time.time()
            running = []
            for i, batch in enumerate(loader):
                bad += batch["bad"]
                if batch["video"] is None:
                    continue
                video, mask, label = batch["video"].to(device), batch["mask"].to(device), batch["label"].to(device)
                with autocast(device, o.precision):
                    logits = train_model(video, None if bool(mask.all()) else mask)
                logits = logits.float()
                if multi:
                    loss = F.binary_cross_entropy_with_logits(logits, label.float())
                else:
                    loss = F.cross_entropy(logits, label, label_smoothing=o.label_smoothing)
                (scaler.scale(loss / o.accum_steps) if scaler else loss / o.accum_steps).backward()
                running.append(distr.mean_across(d, loss).item())
                seen += len(label) * d.world
                if (i + 1) % o.accum_steps:
                    continue
                lr = lr_at(step, base=o.lr, total=total_steps, warmup=o.warmup_steps, min_lr=o.min_lr,
                           schedule=o.schedule)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if scaler:
                    scaler.unscale_(optimizer)
                if o.clip_grad > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_grad)
                (scaler.step(optimizer), scaler.update()) if scaler else optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update(model)
                step += 1
                loss_now = sum(running[-o.accum_steps:]) / min(len(running), o.accum_steps)
                if step % o.log_every == 0:
                    log_line({"step": step, "epoch": epoch, "loss": loss_now, "lr": lr})
                if progress and d.main:
                    progress(step, total_steps, f"loss {loss_now:.3f} lr {lr:.2e} "
                                                f"{seen / max(time.time() - t0, 1e-9):.1f} clips/s")
                if o.max_minutes and time.time() - start_time > o.max_minutes * 60:
                    break
            epoch += 1
            epochs_run += 1
            record = {"epoch": epoch, "step": step, "train_loss": sum(running) / max(len(running), 1),
                      "time_s": time.time() - start_time}
            if bad:
                record["bad_files"] = sorted({p for p, _ in bad})
                if d.main:
                    log.warning("epoch %d: skipped %d bad file(s): %s", epoch, len(record["bad_files"]),
                                ", ".join(record["bad_files"]))
            eval_model = model
            if val_loader is not None:
                if ema is not None:
                    eval_model = _with_weights(model, ema.shadow)
                logits, labels, vbad = predict_views(eval_model, val_loader, device, o.precision, d)
                summary = summarise(logits, labels, len(classes), multi, classes)
                record.update({k: v for k, v in summary.items() if k in ("top1", "top5", "mAP", "videos")})
                last = summary
                if vbad:
                    record["val_bad_files"] = sorted({p for p, _ in vbad})
            log_line(record)
            if d.main:
                score = record.get("top1", record.get("mAP", -record["train_loss"]))
                state = {"optimizer": optimizer.state_dict(), "epoch": epoch, "step": step,
                         "best": max(best, score), "rng": [torch.get_rng_state()]}
                if ema is not None:
                    state["ema"] = ema.shadow
                save_checkpoint(run_dir, "last", model, state)
                if score > best:
                    save_checkpoint(run_dir, "best", eval_model, state)
                best = max(best, score)
            if d.enabled:
                torch.distributed.barrier()
            if (stop_after_epochs and epochs_run >= stop_after_epochs) or \
                    (o.max_minutes and time.time() - start_time > o.max_minutes * 60):
                break
        return {"epoch": epoch, "step": step, "metrics": last, "model": model, "classes": classes}
    finally:
        distr.teardown(d)


def _tensorboard(run_dir: Path):
    """A TensorBoard writer when ``tensorboard`` is installed (metrics.jsonl is always written)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _with_weights(model: TimeSformer, state: dict) -> TimeSformer:
    twin = TimeSformer(model.config).to(next(model.parameters()).device)
    twin.load_state_dict(state)
    return twin


def _preset_config(cfg: RunConfig):
    """The model config (mean/std for the data) without building the model."""
    try:
        return get_config(cfg.model, **{k: v for k, v in cfg.model_args.items() if k not in ("num_classes", "labels")})
    except ValueError as err:
        raise RunError(f"model: {err}") from None


def _load_pretrained(cfg: RunConfig) -> TimeSformer:
    from ..pretrained import load_pretrained

    return load_pretrained(cfg.pretrained, **cfg.model_args)


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)
