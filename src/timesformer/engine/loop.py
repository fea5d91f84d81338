"""Training: ``fit(cfg)``, in four parts that read top to bottom.

- ``build_run``: the run folder, data, model, optimiser, grad scaler, EMA and loaders; on resume, everything the
  ``last`` checkpoint holds, down to the micro-batch inside the epoch and the RNG state of every rank.
- ``train_one_epoch``: micro-batches from ``run.pos`` to the end of the epoch, an optimiser step every
  ``accum_steps``; or to the time limit, after saving ``last`` there.
- ``validate``: the epoch's metrics on the validation data.
- ``end_epoch`` / ``save_run``: the epoch's log line and a checkpoint a resumed run continues bit for bit.

Under torchrun every rank takes the same decision at the same micro-batch -- skip a batch that some rank has no
data for, skip or stop at a non-finite loss, stop at the time limit, save -- so no rank ever waits alone in a
collective that the others have left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..data import (
    BatchMix,
    ClipAugment,
    ClipSpec,
    SyntheticMotion,
    VideoDataset,
    VideoFolder,
    VideoList,
    bad_files_report,
    collate,
    soft_targets,
)
from ..data.formats import FORMATS, read_format
from ..files import write_json_atomic, write_text_atomic
from ..fused import fuse, unfuse
from ..model import TimeSformer, create_model, get_config
from . import distributed as distr
from .checkpoint import find_checkpoint, load_state, rng_state, save_checkpoint, set_rng_state
from .config import RunConfig, RunError, check_resume, load_run_config, to_dict
from .device import autocast, pick_device
from .evaluate import predict_views, summarise
from .optim import EMA, build_optimizer, lr_at, step_unless

log = logging.getLogger(__name__)

__all__ = ["Position", "Run", "RunError", "build_run", "fit", "save_run", "train_one_epoch", "validate"]


@dataclass
class Position:
    """Where a run stands; every checkpoint saves it. ``batch`` counts the global micro-batches of ``epoch`` done
    (0-based epoch); the loss sums and bad files are the epoch's so far."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    best: float = -math.inf
    skipped: int = 0  # steps skipped for a non-finite loss or gradient, in the whole run
    loss_sum: float = 0.0
    loss_count: int = 0
    bad: list = field(default_factory=list)  # (path, error) of unreadable files
    elapsed_s: float = 0.0  # training time before this process started


@dataclass
class Run:
    """Everything ``train_one_epoch``, ``validate`` and ``save_run`` work on."""

    cfg: RunConfig
    d: distr.Dist
    device: torch.device
    folder: Path
    classes: list
    model: TimeSformer  # the module itself; ``train_model`` is it, wrapped in DDP under torchrun
    train_model: torch.nn.Module  # and compiled with optim.compile, until a compile fails (then ``eager_model``)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    ema: EMA | None
    sampler: distr.EpochSampler
    train_loader: DataLoader
    val_loader: DataLoader | None
    multi_label: bool
    steps_per_epoch: int
    pos: Position = field(default_factory=Position)
    last_saved: tuple | None = None  # (folder, step) of the newest complete `last`
    metrics_bytes: int | None = None  # metrics.jsonl's length when the resumed checkpoint was saved
    started: float = field(default_factory=time.time)
    board: object = None  # a TensorBoard writer, when installed (rank 0)
    eager_model: torch.nn.Module | None = None  # with optim.compile: ``train_model`` before compiling
    compiled_ran: bool = False  # the compiled forward has run once
    pending: list = field(default_factory=list)  # steps the device has not reported yet (``_flush``)
    augment: ClipAugment | None = None  # per-clip augmentation on the training device (data.augment_on: device)
    mix: BatchMix | None = None  # MixUp / CutMix of each micro-batch (data.mixup)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.cfg.optim.epochs

    def elapsed(self) -> float:
        return self.pos.elapsed_s + time.time() - self.started


def fit(
    cfg: RunConfig,
    *,
    resume: bool | str = False,
    overwrite: bool = False,
    progress=None,
    stop_after_epochs: int | None = None,
    validate_epochs: bool = True,
) -> dict:
    """Train (and validate every epoch) as ``cfg`` says; returns the last validation metrics.

    Args:
        resume: True: continue ``<out>/<name>`` from its last checkpoint, exactly (also mid-epoch). ``"auto"``:
            continue it if it has a checkpoint, else start it (what torchrun's restarts and preempted jobs need).
        overwrite: replace an existing run folder.
        progress: ``callable(step, total, postfix)`` for a progress bar (rank 0 only).
        stop_after_epochs: end after this many epochs of this call (tests simulate an interruption).
        validate_epochs: False skips validation (the caller scores the model itself; ``best`` then follows the
            training loss).

    Returns:
        ``{"epoch", "step", "metrics", "model", "classes", "stopped"}``; ``stopped`` is True when the time limit
        ended the call before the last epoch (``train --resume`` continues it).
    """
    device = pick_device(cfg.optim.device)
    d = distr.setup(device)
    if d.enabled and device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    run = None
    try:
        run = build_run(cfg, d, device, resume=resume, overwrite=overwrite)
        o = cfg.optim
        deadline = run.started + o.max_minutes * 60 if o.max_minutes else None
        metrics, epochs, stopped = {}, 0, False
        while run.pos.epoch < o.epochs:
            if not train_one_epoch(run, progress=progress, deadline=deadline):
                stopped = True  # inside the epoch: `last` holds the position there
                break
            metrics = validate(run) if run.val_loader is not None and validate_epochs else {}
            end_epoch(run, metrics)
            epochs += 1
            out_of_time = distr.any_across(d, deadline is not None and time.time() > deadline)[0]
            if (stop_after_epochs and epochs >= stop_after_epochs) or out_of_time:
                stopped = run.pos.epoch < o.epochs
                break
        distr.barrier(d)  # every rank done with every collective (not on errors: a rank may be inside one)
        return {
            "epoch": run.pos.epoch,
            "step": run.pos.step,
            "metrics": metrics,
            "model": unfuse(run.model),  # the reference modules: ready to wrap (LoRA, QAT) or hook
            "classes": run.classes,
            "stopped": stopped,
        }
    finally:
        if run is not None:
            run.train_model = run.model  # DDP and the gloo work it holds go before the process group does
        distr.teardown(d)


# --- building the run --------------------------------------------------------------------------------------
def build_run(
    cfg: RunConfig, d: distr.Dist, device: torch.device, *, resume: bool | str = False, overwrite: bool = False
) -> Run:
    """The run's state: fresh, or restored from ``<out>/<name>/last`` with the position inside its epoch."""
    o = cfg.optim
    folder = Path(cfg.out) / cfg.name
    checkpoint = _open_run_dir(folder, cfg, resume, overwrite, d)
    if checkpoint is not None:
        from ..pretrained import load_pretrained

        model = load_pretrained(checkpoint)  # the run's own architecture and class order, strictly loaded
        if cfg.freeze_backbone:
            _freeze_backbone(model)
        classes = list(model.config.labels)
        train_set, val_set = build_datasets(cfg, model.config, classes)
        if cfg.lora:  # the checkpoint holds the merged model: the frozen base again, and the run's adapters on it
            torch.manual_seed(o.seed)
            model = _with_adapters(build_model(cfg, classes, _load_pretrained(cfg) if cfg.pretrained else None), cfg)
            _load_adapters(model, checkpoint, cfg.pretrained)
    else:
        torch.manual_seed(o.seed)  # the same initial weights on every rank
        loaded = _load_pretrained(cfg) if cfg.pretrained else None  # once: its config shapes the data too
        model_cfg = loaded.config if loaded is not None else _preset_config(cfg)
        train_set, val_set = build_datasets(cfg, model_cfg)
        labels = list(loaded.config.labels or []) if loaded is not None else []
        if labels and set(labels) == set(train_set.classes) and labels != train_set.classes:
            train_set, val_set = build_datasets(cfg, model_cfg, labels)  # same classes: keep the pretrained head
        classes = list(train_set.classes)
        model = build_model(cfg, classes, loaded)
        if cfg.lora:
            model = _with_adapters(model, cfg)
    model.config = model.config.replace(**sampling_protocol(cfg))  # the checkpoints say how clips were cut

    model = model.to(device)
    model.set_grad_checkpointing(o.grad_checkpointing)
    if o.fused:  # the same parameters (state-dict keys, optimizer state): only how the hot spots compute changes
        fuse(model, quiet=not d.main)
    per_rank = o.batch_size // d.world
    batches = len(train_set) // o.batch_size // o.accum_steps * o.accum_steps  # whole steps only
    if batches == 0:
        raise RunError(
            f"data.train has {len(train_set)} clips, fewer than one step of optim.batch_size "
            f"{o.batch_size} x optim.accum_steps {o.accum_steps}"
        )
    sampler = distr.EpochSampler(len(train_set), global_batch=o.batch_size, d=d, seed=o.seed, batches=batches)
    # Not persistent: workers are started each epoch, so they see the dataset's epoch (its augmentation seed).
    # The loaders' own generators keep them from drawing on the global RNG that dropout uses.
    loader = DataLoader(
        train_set,
        batch_size=per_rank,
        sampler=sampler,
        num_workers=cfg.data.workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",  # copies to the GPU that overlap its work
        generator=torch.Generator().manual_seed(o.seed + d.rank),
    )
    val_loader = None
    if val_set is not None:
        val_loader = DataLoader(
            val_set,
            batch_size=max(per_rank, 1),
            sampler=distr.ShardSampler(len(val_set), d),
            num_workers=cfg.data.workers,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(o.seed),
        )
    run = Run(
        cfg=cfg,
        d=d,
        device=device,
        folder=folder,
        classes=classes,
        model=model,
        train_model=model,
        optimizer=build_optimizer(
            model,
            name=o.optimizer,
            lr=o.lr,
            weight_decay=o.weight_decay,
            momentum=o.momentum,
            layer_decay=o.layer_decay,
        ),
        scaler=torch.amp.GradScaler("cuda") if o.precision == "fp16" else None,
        ema=EMA(model, o.ema_decay) if o.ema_decay > 0 else None,
        sampler=sampler,
        train_loader=loader,
        val_loader=val_loader,
        multi_label=bool(getattr(train_set, "multi_label", False)),
        steps_per_epoch=batches // o.accum_steps,
    )
    run.augment, run.mix = training_augmentation(cfg)
    if checkpoint is not None:
        restore_run(run, checkpoint, load_state(checkpoint))
    else:
        torch.manual_seed(o.seed + d.rank)  # dropout and drop path draw differently on each rank

    def write_run_files():  # only now: a resume refused above leaves the run's config.yaml as it was
        write_text_atomic(folder / "config.yaml", _yaml(to_dict(cfg)))
        write_json_atomic(folder / "classes.json", classes)
        (folder / "metrics.jsonl").touch()  # there, even for a run stopped before its first log line
        if checkpoint is not None:
            _truncate(folder / "metrics.jsonl", run.metrics_bytes)  # lines logged after the checkpoint go

    _on_rank0(d, write_run_files, f"writing {folder}/config.yaml")
    if d.main:
        run.board = _tensorboard(folder, purge_step=run.pos.step + 1 if checkpoint is not None else None)
    if d.enabled:  # after the restore: an error there leaves no DDP wrapper to outlive the process group
        ddp_args = dict(device_ids=[device.index]) if device.type == "cuda" else {}
        run.train_model = torch.nn.parallel.DistributedDataParallel(model, **ddp_args)
    if o.compile:  # compiled on the first step; attributes (DDP's no_sync) pass through to the wrapped module
        run.eager_model, run.train_model = run.train_model, torch.compile(run.train_model)
    return run


def training_augmentation(cfg: RunConfig) -> tuple[ClipAugment | None, BatchMix | None]:
    """What the loop itself applies to each micro-batch: the per-clip augmentation where it runs on the device
    (SyntheticMotion's clips always: they are made, not decoded; never flipped, its classes are directions), and
    MixUp / CutMix."""
    d = cfg.data
    augment = None
    if d.augment_on == "device" or d.kind == "synthetic":
        flip = d.flip and d.kind != "synthetic"
        augment = ClipAugment(
            flip=flip, randaugment_n=d.randaugment_n, randaugment_m=d.randaugment_m, erase_prob=d.erase_prob
        )
    mix = BatchMix(d.mixup, d.cutmix_share)
    return augment or None, mix or None


def build_datasets(cfg: RunConfig, model_cfg, classes: list[str] | None = None):
    """Training and validation data; ``classes`` (a checkpoint's order) labels them by class name."""
    d = cfg.data
    if d.kind == "synthetic":
        kw = dict(
            num_frames=d.num_frames, size=d.synthetic_size, seed=cfg.optim.seed, mean=model_cfg.mean, std=model_cfg.std
        )
        if classes is not None or d.synthetic_classes:
            kw["classes"] = tuple(classes if classes is not None else d.synthetic_classes)
        return (
            SyntheticMotion(d.synthetic_train, split="train", **kw),
            SyntheticMotion(d.synthetic_val, split="val", **kw),
        )
    if d.kind not in ("folder", "list", *FORMATS):
        raise RunError(f"data.kind must be one of {('synthetic', 'folder', 'list', *FORMATS)}; got {d.kind!r}")
    if not d.train:
        raise RunError(f"data.kind={d.kind} needs data.train (a folder, a list file or the dataset's annotations)")
    spec = clip_spec(cfg, model_cfg)

    def make(path, train, classes):
        kw = dict(spec=spec, train=train, seed=cfg.optim.seed)
        if d.kind == "folder":
            return VideoFolder(path, classes=classes, **kw)
        if d.kind == "list":
            return VideoList(path, root=d.root, classes=classes, **kw)
        items, names = read_format(
            d.kind, path, root=d.root, split="train" if train else "val", fold=d.split, classes=classes, labels=d.labels
        )
        return VideoDataset(items, names, **kw)

    train = make(d.train, True, classes)
    val = d.val or (d.train if d.kind in ("ssv2", "ucf101", "hmdb51") and Path(d.train).is_dir() else None)
    return train, make(val, False, train.classes) if val else None  # val: labelled by train's class names


def sampling_protocol(cfg: RunConfig) -> dict:
    """How the run cuts clips, as a model config records it. SyntheticMotion clips are exactly ``num_frames``
    long, every frame taken: segment sampling of the written files does the same."""
    d = cfg.data
    if d.kind == "synthetic":
        return dict(sampling="segment")
    return dict(sampling=d.sampling, sampling_rate=d.sampling_rate, fps=d.fps)


def clip_spec(cfg: RunConfig, model_cfg) -> ClipSpec:
    d = cfg.data
    return ClipSpec(
        num_frames=d.num_frames,
        sampling=d.sampling,
        sampling_rate=d.sampling_rate,
        fps=d.fps,
        crop_size=d.crop_size,
        scale=tuple(d.scale),
        flip=d.flip,
        num_clips=d.num_clips,
        num_crops=d.num_crops,
        mean=tuple(model_cfg.mean),
        std=tuple(model_cfg.std),
        max_pixels=d.max_pixels,
        decoder=d.decoder,
        randaugment_n=d.randaugment_n,
        randaugment_m=d.randaugment_m,
        erase_prob=d.erase_prob,
        augment_in_loader=d.augment_on == "loader",
    )


def build_model(cfg: RunConfig, classes: list[str], pretrained: TimeSformer | None = None) -> TimeSformer:
    """The run's model: ``pretrained`` (already loaded from ``cfg.pretrained``) with a head for ``classes``, or a
    fresh preset."""
    labels = tuple(classes)
    if cfg.pretrained:
        model = pretrained if pretrained is not None else _load_pretrained(cfg)
        if model.config.num_classes != len(labels) or model.config.labels != labels:
            model.reset_classifier(len(labels), labels=labels)
        if cfg.freeze_backbone:
            _freeze_backbone(model)
        return model
    try:
        model = create_model(cfg.model, **{**cfg.model_args, "num_classes": len(labels), "labels": labels})
    except ValueError as err:
        raise RunError(f"model: {err}") from None
    if "num_classes" in cfg.model_args and cfg.model_args["num_classes"] != len(labels):
        raise RunError(
            f"model_args.num_classes={cfg.model_args['num_classes']} contradicts the data, which has "
            f"{len(labels)} classes"
        )
    return model


def _with_adapters(model: TimeSformer, cfg: RunConfig) -> TimeSformer:
    from .lora import add_lora

    return add_lora(model, cfg.lora, cfg.lora_alpha, cfg.lora_targets)


def _load_adapters(model: TimeSformer, checkpoint: Path, pretrained: str) -> None:
    """The adapters (and head) a LoRA run's checkpoint saved, onto ``model`` (its base from the pretrained
    weights); the merged result must be the checkpoint's model, or the pretrained weights changed under the run."""
    from ..pretrained import read_state
    from .lora import load_adapter_state, merged

    path = checkpoint / "adapter_model.safetensors"
    if not path.is_file():
        raise RunError(f"{checkpoint}: no adapter_model.safetensors, so the LoRA run can't continue (lora is set)")
    try:
        load_adapter_state(model, read_state(path))
    except RunError as err:
        raise RunError(f"{path}: {err}") from None
    saved = read_state(checkpoint / "model.safetensors")
    for name, tensor in merged(model).state_dict().items():
        if name in saved and not torch.allclose(tensor, saved[name], atol=1e-5, rtol=1e-4):
            raise RunError(
                f"{checkpoint}: its {name} is not the pretrained weights plus the run's adapters: the pretrained "
                f"weights ({pretrained}) changed since the run began"
            )


def _freeze_backbone(model: TimeSformer):
    """Train the classifier head only."""
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("head.")


def restore_run(run: Run, folder: Path, state: dict) -> None:
    """Optimiser, scaler, EMA, position and this rank's RNG from a checkpoint's ``state.pt`` (the weights came
    with the model). The optimiser keeps the config's settings, so overrides given on resume take effect."""
    d, o = run.d, run.cfg.optim
    settings = [{k: v for k, v in group.items() if k != "params"} for group in run.optimizer.param_groups]
    run.optimizer.load_state_dict(state["optimizer"])
    for group, mine in zip(run.optimizer.param_groups, settings):
        group.update(mine)  # the config's weight decay, momentum ... (load_state_dict brings back the saved ones)
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    if run.ema is not None and state.get("ema"):
        run.ema.load_state_dict(state["ema"])
    run.pos = Position(**{f.name: state[f.name] for f in dataclasses.fields(Position) if f.name in state})
    run.last_saved = (folder, run.pos.step)
    run.metrics_bytes = state.get("metrics_bytes")
    _rebatch(run.pos, state.get("batch_size", o.batch_size), state.get("accum_steps", o.accum_steps), o)
    run.pos.batch = min(run.pos.batch, run.sampler.batches)
    if d.main:
        restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        log.warning(
            "%sresuming %s from %s (epoch %d, step %d of %d)",
            f"torchrun restart {restart}: " if restart else "",
            run.folder,
            folder.name,
            run.pos.epoch + 1,
            run.pos.step,
            run.total_steps,
        )
    saved = state.get("rng", [])
    if state.get("world", len(saved)) == d.world and d.rank < len(saved):
        # the last thing: nothing draws from the RNG after it
        set_rng_state(saved[d.rank], run.device, cuda_seed=o.seed + d.rank + run.pos.step)
    else:
        if d.main:
            log.warning(
                "the run was saved by %s process(es), resumed by %d: dropout draws differ from an uninterrupted run",
                state.get("world", len(saved)),
                d.world,
            )
        torch.manual_seed(o.seed + d.rank + run.pos.step)


def _rebatch(pos: Position, batch_size: int, accum_steps: int, o) -> None:
    """A resume that changes the batch or accumulation inside an epoch continues at the same clip of it."""
    if not pos.batch or (batch_size, accum_steps) == (o.batch_size, o.accum_steps):
        return
    clips = pos.batch * batch_size
    if clips % (o.batch_size * o.accum_steps):
        raise RunError(
            f"optim.batch_size/accum_steps: the run stopped {clips} clips into epoch {pos.epoch + 1}, "
            f"not a whole number of steps of {o.batch_size} x {o.accum_steps}; resume with its "
            f"{batch_size} x {accum_steps} and change them at the epoch's end"
        )
    pos.batch = clips // o.batch_size


# --- one training epoch ------------------------------------------------------------------------------------
# The hot path never waits for the device: losses, the gradient norm and the decision to skip a non-finite step
# stay there (one collective a step averages the losses across ranks). ``_flush`` brings them to the host, in one
# copy, every ``log_every`` steps, before a checkpoint and at the epoch's end: it then logs, counts skipped steps
# and stops the run past ``optim.skip_nonfinite``. Where the optimizer can't skip a step on the device (the CPU's
# per-tensor loop), the skip is read on the host: one sync a step, free on a CPU.
@dataclass
class _Accumulated:
    """The micro-batches of one optimiser step."""

    contributed: int = 0  # micro-batches that reached backward
    synced: bool = False  # the last of them all-reduced the gradients (DDP)
    losses: list = field(default_factory=list)  # this rank's loss of each, 0-d tensors on the device


@dataclass
class _Step:
    """An optimiser step as the device saw it, until ``_flush`` reads it."""

    step: int
    epoch: int
    lr: float
    losses: torch.Tensor | None = None  # (micro-batches,) the mean across ranks; None: no micro-batch had data
    norm: torch.Tensor | None = None  # the gradient norm before clipping
    bad: torch.Tensor | None = None  # non-finite loss, or gradients (without fp16's scaler): counted as skipped


def train_one_epoch(run: Run, *, progress=None, deadline: float | None = None) -> bool:
    """Micro-batches from ``run.pos.batch`` to the end of the epoch; an optimiser step every ``accum_steps``.

    Returns False when the time limit stopped it inside the epoch, after saving ``last`` there.
    """
    o, pos, d = run.cfg.optim, run.pos, run.d
    run.sampler.set_epoch(pos.epoch, start_batch=pos.batch)
    if hasattr(run.train_loader.dataset, "set_epoch"):
        run.train_loader.dataset.set_epoch(pos.epoch)
    run.train_model.train()
    clips, t0 = 0, time.time()
    for micro_batches in _by_step(run.train_loader, o.accum_steps):
        for batch in micro_batches:
            pos.bad += batch["bad"]
        # one host all-reduce a step: a micro-batch that some rank has no data for is skipped by every rank (the
        # others would wait in backward's all-reduce), and every rank stops at the time limit together
        *empty, late = distr.any_across(
            d, *(batch["video"] is None for batch in micro_batches), deadline is not None and time.time() > deadline
        )
        acc = _Accumulated()
        for i, (batch, skip) in enumerate(zip(micro_batches, empty)):
            final = i == len(micro_batches) - 1
            if not skip:
                acc.losses.append(_forward_backward(run, batch, sync=final))
                clips += len(batch["label"]) * d.world
            acc.contributed, acc.synced = acc.contributed + (not skip), final and not skip
            pos.batch += 1
        lr = _optimizer_step(run, acc)
        if progress and d.main:
            loss_text = f"loss {pos.loss_sum / max(pos.loss_count, 1):.3f} " if pos.loss_count else ""
            progress(
                pos.step, run.total_steps, f"{loss_text}lr {lr:.2e} {clips / max(time.time() - t0, 1e-9):.1f} clips/s"
            )
        if pos.batch < run.sampler.batches:  # the epoch's last step is saved by end_epoch
            if late:
                save_run(run)
                return False
            if o.save_every_steps and pos.step % o.save_every_steps == 0:
                save_run(run)
    _flush(run)
    return True


def _by_step(loader, accum_steps: int):
    """The loader's micro-batches in lists of one optimiser step each (an epoch, and a resumed one, starts at a
    step's first micro-batch and holds whole steps)."""
    step = []
    for batch in loader:
        step.append(batch)
        if len(step) == accum_steps:
            yield step
            step = []
    if step:
        yield step


def _forward_backward(run: Run, batch: dict, *, sync: bool) -> torch.Tensor:
    """This rank's loss of one micro-batch (0-d, on the device), gradients added to ``.grad``; DDP all-reduces
    them only when ``sync`` (the step's last micro-batch)."""
    o = run.cfg.optim
    video, mask, label = (batch[k].to(run.device, non_blocking=True) for k in ("video", "mask", "label"))
    seed = hash((o.seed, run.d.rank, run.pos.epoch, run.pos.batch)) & (2**62 - 1)  # this micro-batch's draws
    if run.augment is not None:
        video = run.augment.normalized(video, seed, run.model.config.mean, run.model.config.std)
    if run.mix is not None:  # soft targets, mixed as the clips are
        video, label = run.mix(video, soft_targets(label, len(run.classes), o.label_smoothing), seed + 1)
    no_sync = run.train_model.no_sync() if run.d.enabled and not sync else contextlib.nullcontext()
    with no_sync:
        with autocast(run.device, o.precision):
            logits = _train_forward(run, video, None if batch["complete"] else mask)
        logits = logits.float()
        if run.multi_label:
            loss = F.binary_cross_entropy_with_logits(logits, label.float())
        elif run.mix is not None:
            loss = F.cross_entropy(logits, label)  # class probabilities, already smoothed
        else:
            loss = F.cross_entropy(logits, label, label_smoothing=o.label_smoothing)
        scaled = loss / o.accum_steps
        (run.scaler.scale(scaled) if run.scaler else scaled).backward()
    return loss.detach()


def _train_forward(run: Run, video: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``run.train_model(video, mask)``; where ``optim.compile`` fails (no C++ compiler, an unsupported op), a
    warning says why and training goes on eagerly."""
    if run.eager_model is None or run.train_model is run.eager_model:
        return run.train_model(video, mask)
    try:
        logits = run.train_model(video, mask)
        run.compiled_ran = True
        return logits
    except torch.OutOfMemoryError:
        raise  # eager would need the memory too
    except Exception as err:  # inductor fails in many ways; nothing ran, so the micro-batch runs again eagerly
        if run.compiled_ran:  # only the first call's compile may fail over to eager; later: a real error
            raise
        warnings.warn(
            f"optim.compile: torch.compile failed ({type(err).__name__}: "
            f"{str(err).strip().splitlines()[0][:200]}); training eagerly",
            RuntimeWarning,
            stacklevel=2,
        )
        run.train_model = run.eager_model
        return run.train_model(video, mask)


def _optimizer_step(run: Run, acc: _Accumulated) -> float:
    """Apply the accumulated gradients, unless the step's loss or gradients are not finite (then the weights, the
    optimizer and the EMA stay as they were); returns its lr. Decided on the device: ``_flush`` reports it."""
    o, pos, d = run.cfg.optim, run.pos, run.d
    # the schedule follows the position in the data (the same as the step count, unless a resume changed the batch)
    lr = lr_at(
        pos.epoch * run.steps_per_epoch + pos.batch // o.accum_steps - 1,
        base=o.lr,
        total=run.total_steps,
        warmup=o.warmup_steps,
        min_lr=o.min_lr,
        schedule=o.schedule,
    )
    record, applied = _Step(step=pos.step + 1, epoch=pos.epoch + 1, lr=lr), None
    if acc.contributed:
        record.losses = distr.mean_across(d, torch.stack(acc.losses))
        if d.enabled and not acc.synced:
            distr.average_gradients(d, run.model.parameters())
        if run.scaler:
            run.scaler.unscale_(run.optimizer)
        grads = [p.grad for p in run.model.parameters() if p.grad is not None]
        if acc.contributed < o.accum_steps:  # each micro-batch's loss was divided by accum_steps
            torch._foreach_mul_(grads, o.accum_steps / acc.contributed)
        record.norm = _norm(grads, run.device)
        finite_norm = torch.isfinite(record.norm)
        record.bad = ~torch.isfinite(record.losses).all()
        if run.scaler is None:  # fp16's scaler skips overflowing steps itself, as a matter of course
            record.bad = record.bad | ~finite_norm
        skip = record.bad | ~finite_norm
        if o.clip_grad > 0:  # the factor in float64, as clip/(norm + eps) in Python: the same weights as ever
            norm64 = record.norm.double()
            torch._foreach_mul_(grads, torch.where(norm64 > o.clip_grad, o.clip_grad / (norm64 + 1e-6), 1.0).float())
        for group in run.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        applied = step_unless(run.optimizer, skip)
        if run.scaler:
            run.scaler.update()  # lowers the scale after an overflow; a scale below 1 stops the run (_flush)
        if run.ema is not None:
            run.ema.update(run.model, skip=skip)
    run.optimizer.zero_grad(set_to_none=True)
    pos.step += 1
    run.pending.append(record)
    if pos.step % o.log_every == 0 or applied is False:  # a skip read on the host anyway is reported at its step
        _flush(run)
    return lr


def _norm(grads: list, device: torch.device) -> torch.Tensor:
    """The global L2 norm of ``grads``, 0-d on ``device``."""
    if not grads:
        return torch.zeros((), device=device)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def _flush(run: Run) -> None:
    """Bring the steps since the last flush to the host (one copy): add their losses to the epoch's, log them,
    count the skipped ones, and stop the run past ``optim.skip_nonfinite`` or when fp16's loss scale fell below 1.
    Every rank flushes at the same steps and reads the same values (the losses are averaged across ranks, the
    gradients all-reduced), so every rank stops together."""
    o, pos, steps = run.cfg.optim, run.pos, run.pending
    if not steps:
        return
    run.pending = []
    parts = [t.reshape(-1).float() for s in steps if s.losses is not None for t in (s.losses, s.norm, s.bad)]
    values = iter(torch.cat(parts).tolist() if parts else [])
    for s in steps:
        if s.losses is None:
            continue
        losses = [next(values) for _ in range(len(s.losses))]
        norm, bad = next(values), bool(next(values))
        finite = [x for x in losses if math.isfinite(x)]
        pos.loss_sum, pos.loss_count = pos.loss_sum + sum(finite), pos.loss_count + len(finite)
        if bad:
            nonfinite = next((x for x in losses if not math.isfinite(x)), None)
            problem = f"loss ({nonfinite})" if nonfinite is not None else f"gradients (norm {norm})"
            pos.skipped += 1
            _log(run, {"step": s.step, "epoch": s.epoch, "skipped": f"non-finite {problem}"})
            if pos.skipped > o.skip_nonfinite:
                raise RunError(
                    f"non-finite {problem} at step {s.step} (epoch {s.epoch}); last good "
                    f"checkpoint: {_last_good(run)}. Lower optim.lr, set optim.clip_grad, or let "
                    f"optim.skip_nonfinite=N skip up to N such steps"
                )
        elif s.step % o.log_every == 0:
            record = {"step": s.step, "epoch": s.epoch, "loss": sum(losses) / len(losses), "lr": s.lr}
            _log(run, {**record, "grad_norm": norm} if math.isfinite(norm) else record)
    if run.scaler is not None and run.scaler.get_scale() < 1.0:
        raise RunError(
            f"fp16 loss scale fell to {run.scaler.get_scale():g} by step {pos.step}: the gradients overflow fp16 "
            f"even unscaled; last good checkpoint: {_last_good(run)}. Use optim.precision=bf16, or lower optim.lr"
        )


# --- validation, the end of an epoch, checkpoints ----------------------------------------------------------
def validate(run: Run) -> dict:
    """Multi-view metrics on ``data.val``, with the EMA weights when there is an EMA, gathered across ranks."""
    model = run.ema.module if run.ema is not None else run.model
    logits, labels, bad = predict_views(model, run.val_loader, run.device, run.cfg.optim.precision, run.d)
    summary = summarise(logits, labels, len(run.classes), run.multi_label, run.classes)
    if bad:
        summary["bad_files"] = bad_files_report(bad)["bad_files"]
    return summary


def end_epoch(run: Run, metrics: dict) -> None:
    """Log the epoch (loss, validation metrics, the bad files of every rank), move to the next epoch and save
    ``last``, and ``best`` when the score improved."""
    pos = run.pos
    pos.bad = _merge_bad(distr.gather_objects(run.d, pos.bad))  # every rank's
    record = {
        "epoch": pos.epoch + 1,
        "step": pos.step,
        "train_loss": pos.loss_sum / max(pos.loss_count, 1),
        "time_s": round(run.elapsed(), 3),
    }
    if pos.bad:
        record.update(bad_files_report(pos.bad))
        if run.d.main:
            log.warning(
                "epoch %d: %d bad file(s) (unreadable: skipped; partial: frames past the break masked): %s",
                pos.epoch + 1,
                len(record["bad_files"]),
                "; ".join(f"{path} ({why.removeprefix(f'{path}: ')})" for path, why in record["bad_reasons"].items()),
            )
    record.update({k: v for k, v in metrics.items() if k in ("top1", "top5", "mAP", "videos")})
    if "bad_files" in metrics:
        record["val_bad_files"] = metrics["bad_files"]
    _log(run, record)
    score = record.get("top1", record.get("mAP", -record["train_loss"]))
    improved = score > pos.best  # a NaN score never is
    run.pos = Position(
        epoch=pos.epoch + 1,
        step=pos.step,
        best=score if improved else pos.best,
        skipped=pos.skipped,
        elapsed_s=pos.elapsed_s,
    )
    save_run(run, ("best", "last") if improved else ("last",))  # best first: a `last` never claims a best not saved


def save_run(run: Run, tags=("last",)) -> None:
    """Checkpoint the run as ``tags``, in that order (``best`` holds the EMA weights when there is an EMA). Every
    rank calls it:
    it gathers each rank's RNG state and bad files; rank 0 writes. Non-finite weights are never written."""
    _flush(run)  # the checkpoint holds every step's loss and skip
    d, pos = run.d, run.pos
    models = {"last": run.model, "best": run.ema.module if run.ema is not None else run.model}
    for tag in {id(models[t]): t for t in tags}.values():  # each distinct model checked once
        bad = _nonfinite_tensor(models[tag])
        if bad is not None:  # the same on every rank: their weights are equal
            epoch = pos.epoch + 1 if pos.batch else pos.epoch
            raise RunError(
                f"non-finite weights ({bad}) after step {pos.step} (epoch {epoch}); last good "
                f"checkpoint: {_last_good(run)}. Lower optim.lr or set optim.clip_grad"
            )
    parts = distr.gather_objects(d, (rng_state(run.device), pos.bad))
    rngs, pos.bad = [rng for rng, _ in parts], _merge_bad(bad for _, bad in parts)

    def write():
        from .lora import adapter_config, adapter_state, has_lora, merged

        metrics = run.folder / "metrics.jsonl"
        state = {
            **dataclasses.asdict(pos),
            "elapsed_s": run.elapsed(),
            "optimizer": run.optimizer.state_dict(),
            "scaler": run.scaler.state_dict() if run.scaler is not None else None,
            "ema": run.ema.state_dict() if run.ema is not None else None,
            "rng": rngs,
            "world": d.world,
            "batch_size": run.cfg.optim.batch_size,
            "accum_steps": run.cfg.optim.accum_steps,
            "metrics_bytes": metrics.stat().st_size if metrics.exists() else 0,
        }
        for tag in tags:
            model = models[tag]
            if has_lora(model):  # the merged model for predict, eval and export; the adapters to continue from
                save_checkpoint(run.folder, tag, merged(model), state, (adapter_state(model), adapter_config(model)))
            else:
                save_checkpoint(run.folder, tag, model, state)

    _on_rank0(d, write, f"saving {'/'.join(tags)} in {run.folder}")
    run.last_saved = (run.folder / "last", pos.step)


def _nonfinite_tensor(model: torch.nn.Module) -> str | None:
    """The name of the first weight or buffer holding a NaN or an inf, or None (one sync on a GPU)."""
    tensors = {name: t for name, t in model.state_dict().items() if t.is_floating_point()}
    if bool(torch.stack([torch.isfinite(t).all() for t in tensors.values()]).all()):
        return None
    return next(name for name, t in tensors.items() if not torch.isfinite(t).all())


def _merge_bad(parts) -> list:
    """Bad files from several ranks, each once: sorted ``(path, error)``."""
    merged = {}
    for part in parts:
        merged.update({path: error for path, error in part})
    return sorted(merged.items())


def _last_good(run: Run) -> str:
    return f"{run.last_saved[0]} (step {run.last_saved[1]})" if run.last_saved else "none yet"


def _log(run: Run, record: dict):
    """A line of ``metrics.jsonl`` (and TensorBoard scalars), from rank 0."""
    if not run.d.main:
        return
    try:
        with open(run.folder / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as err:  # the run goes on; a checkpoint that can't be written stops it on every rank
        log.warning("can't log to %s: %s", run.folder / "metrics.jsonl", err)
        return
    if run.board is not None:
        for key, value in record.items():
            if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                run.board.add_scalar(key, value, record.get("step", 0))


# --- the run folder ----------------------------------------------------------------------------------------
def _open_run_dir(folder: Path, cfg: RunConfig, resume, overwrite: bool, d: distr.Dist) -> Path | None:
    """Rank 0 decides -- resume from which checkpoint, start afresh, or refuse -- and prepares the folder; every
    rank gets its answer, so that no two ranks see the folder at different moments. Returns the checkpoint to
    resume from, or None for a fresh run."""

    def decide():
        checkpoint = _prepare_run_dir(folder, resume, overwrite)
        if checkpoint is not None:
            _check_resume(folder, cfg)
        return checkpoint

    return _on_rank0(d, decide, f"preparing {folder}")


def _prepare_run_dir(run_dir: Path, resume, overwrite: bool) -> Path | None:
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if overwrite and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0:
        raise RunError(
            "--overwrite under torchrun --max-restarts would wipe the run at every restart; remove the "
            "folder yourself, or pass --auto-resume"
        )
    if resume:
        checkpoint = find_checkpoint(run_dir)
        if checkpoint is not None:
            return checkpoint
        if resume != "auto":
            raise RunError(f"{run_dir}: nothing to resume (no complete 'last' checkpoint)")
        overwrite = True  # --auto-resume: a run that died before its first checkpoint starts afresh
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            hint = (
                f" (torchrun restart {restart}: pass --auto-resume so that restarts continue the run)"
                if restart
                else ""
            )
            raise RunError(f"{run_dir} already exists; pass --resume to continue it or --overwrite to start over{hint}")
        if resume:
            log.warning("%s has no checkpoint to resume: starting it afresh", run_dir)
        import shutil

        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return None


def _on_rank0(d: distr.Dist, action, what: str):
    """``action()`` on rank 0 (file system work), its result on every rank. If it fails, every rank raises: the
    others would otherwise wait alone in their next collective. A bad set-up or an ``OSError`` (a full disk) is
    a ``RunError`` everywhere."""
    result = error = None
    if d.main:
        try:
            result = action()
        except Exception as err:
            error = err
    text = None if error is None else str(error) if isinstance(error, ValueError) else f"{what}: {error}"
    text, result = distr.broadcast_object(d, (text, result))
    if error is not None and not isinstance(error, (ValueError, OSError)):
        raise error  # rank 0: a bug keeps its traceback
    if text is not None:
        raise RunError(text)
    return result


def _check_resume(run_dir: Path, cfg: RunConfig):
    """The resumed config against the run's own ``config.yaml``: the model, classes and data can't change."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        log.warning("%s has no config.yaml: the resumed config can't be checked against the run's", run_dir)
        return
    check_resume(load_run_config(path), cfg)


def _truncate(path: Path, size: int | None):
    """Cut ``path`` back to ``size`` bytes (atomically), dropping lines logged after a checkpoint."""
    if size is None or not path.exists() or path.stat().st_size <= size:
        return
    write_text_atomic(path, path.read_bytes()[:size].decode())


def _tensorboard(run_dir: Path, purge_step: int | None = None):
    """A TensorBoard writer when ``tensorboard`` is installed (metrics.jsonl is always written); a resumed run
    purges the events logged after its checkpoint."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step)


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
