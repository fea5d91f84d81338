"""Run configuration: a YAML file plus ``key=value`` overrides, checked field by field.

Unknown keys, wrong types and names outside a setting's choices are a ``RunError`` (a ``UserError``) naming the key
and the value (the CLI prints it as one line, exit 2). A resumed run keeps its model, classes and data:
``check_resume`` names the field a resume may not change. ``run_config_for`` is what ``train`` and ``finetune`` run:
a new run's config, or a resumed one's own with the overrides on top.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError


class RunError(UserError):
    """Bad run set-up (a config key or value, an existing folder, data/model mismatch ...): the CLI prints it and
    exits 2."""


# settings with a fixed set of names, checked when the config loads (before a run folder or a model is made)
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant")


@dataclass
class DataConfig:
    # synthetic | folder | list | a dataset's own format: ssv2 | ucf101 | hmdb51 | rawframes | charades
    kind: str = "synthetic"
    train: str | None = None  # folder root, list file, or the format's annotations (file, or folder of split files)
    val: str | None = None  # default for ssv2/ucf101/hmdb51 given a folder: its validation/test split
    root: str | None = None  # base folder of the paths in list files (the videos)
    split: int = 1  # ucf101 / hmdb51: which of the official train/test splits
    labels: str | None = None  # the format's class list where it is not beside the annotations
    num_frames: int = 8
    sampling: str = "dense"  # dense (Kinetics) | segment (Something-Something)
    sampling_rate: int = 8
    fps: float = 30.0
    crop_size: int = 224
    scale: list = field(default_factory=lambda: [256, 320])
    flip: bool = True  # set False when flipping changes the label (left/right classes)
    # the fine-tuning recipe (Kornia; each draw the same on every frame of a clip): RandAugment's ops and magnitude
    # (0 ops: off), RandomErasing's probability, the share of batches mixed (MixUp or CutMix; soft targets) and of
    # those the share CutMix takes; in the loader, or on the training device per batch (augment_on: device)
    randaugment_n: int = 0
    randaugment_m: int = 9
    erase_prob: float = 0.0
    mixup: float = 0.0
    cutmix_share: float = 0.5
    augment_on: str = "loader"  # loader | device (SyntheticMotion: always the device, and never flipped)
    num_clips: int = 1  # test views
    num_crops: int = 1
    workers: int = 0  # DataLoader processes decoding in parallel
    max_pixels: int = 8192 * 8192  # a video whose frames are larger (width x height) is a bad file, never decoded
    decoder: str = "pyav"  # pyav | torchcodec (optional: pip install torchcodec, with FFmpeg's libraries)
    synthetic_train: int = 4800  # SyntheticMotion clips per epoch (kind=synthetic)
    synthetic_val: int = 600
    synthetic_size: int = 32
    synthetic_classes: list = field(default_factory=list)  # a subset of SyntheticMotion's classes (empty: the 12)


@dataclass
class OptimConfig:
    optimizer: str = "adamw"  # adamw | sgd (momentum, Nesterov)
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05  # not on norms, biases, embeddings
    # layer-wise lr decay (fine-tuning, as BEiT/VideoMAE): of depth d, block i at lr x decay^(d - i), the embeddings
    # at decay^(d + 1), the head at 1; 1 = off
    layer_decay: float = 1.0
    momentum: float = 0.9
    schedule: str = "cosine"  # cosine | constant (after warmup)
    warmup_steps: int = 100
    epochs: int = 10
    batch_size: int = 32  # global batch: split across processes under torchrun
    accum_steps: int = 1
    clip_grad: float = 0.0  # max grad norm; 0 = off
    label_smoothing: float = 0.0
    precision: str = "bf16"  # fp32 | bf16 (autocast, CPU and GPU) | fp16 (CUDA, grad scaler)
    grad_checkpointing: bool = False
    compile: bool = False  # torch.compile (inductor) the training forward and backward; eager if it fails
    # the speed layer (timesformer.fused): fused GELU+fc2 backward, temporal_fc folded into proj, the fastest
    # attention kernel; exact, and only on plain nn.Linear modules (a hooked or wrapped one runs as it is)
    fused: bool = True
    ema_decay: float = 0.0  # 0 = no EMA of weights
    seed: int = 0
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda
    max_minutes: float = 0.0  # stop (and checkpoint, mid-epoch too) after this long; 0 = no limit
    save_every_steps: int = 0  # also write `last` every this many steps inside an epoch; 0 = at epoch ends only
    skip_nonfinite: int = 0  # steps with a non-finite loss the run may skip (each logged); 0 = stop at the first
    log_every: int = 10  # steps between metrics.jsonl loss lines


@dataclass
class RunConfig:
    name: str = "run"
    out: str = "runs"
    model: str = "timesformer_tiny"
    model_args: dict = field(default_factory=dict)  # TimeSformerConfig overrides
    pretrained: str | None = None  # finetune: anything load_pretrained reads
    freeze_backbone: bool = False  # finetune: train the new head only
    # finetune with LoRA (peft): rank-`lora` adapters on these linears, scale lora_alpha / lora (0: 1); the head
    # trains in full, the rest is frozen; 0 = off
    lora: int = 0
    lora_alpha: float = 0.0
    lora_targets: list = field(default_factory=lambda: ["qkv", "proj", "fc1", "fc2", "temporal_fc"])
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


def _check(value, annotation, key: str):
    """Value against a field annotation; ints are accepted for floats."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {**vars(typing), "list": list, "dict": dict})  # our own annotations only
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _check(value, option, key)
            except ValueError:
                pass
        raise RunError(f"config key {key}: expected {annotation}; got {value!r} ({type(value).__name__})")
    if annotation is type(None):
        if value is None:
            return None
    elif annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif annotation is float and isinstance(value, str) and _is_float(value):  # YAML 1.1 reads 3e-4 as a string
        return float(value)
    elif (
        annotation in (list, dict, str, int, bool)
        and isinstance(value, annotation)
        and not (annotation is int and isinstance(value, bool))
    ):
        return value
    elif annotation is list and isinstance(value, tuple):
        return list(value)
    raise RunError(
        f"config key {key}: expected {getattr(annotation, '__name__', annotation)}; got {value!r} "
        f"({type(value).__name__})"
    )


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _build(cls, data: dict, prefix: str = ""):
    if not isinstance(data, dict):
        raise RunError(f"config key {prefix.rstrip('.') or '<root>'}: expected a mapping; got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise RunError(
            f"unknown config key {prefix}{unknown[0]}; known in {prefix.rstrip('.') or 'the top level'}: "
            f"{sorted(fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        f = fields[name]
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            kwargs[name] = _build(f.default_factory, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check(value, f.type, prefix + name)
    return cls(**kwargs)


def _parse_value(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_run_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """YAML file (optional) + ``section.key=value`` overrides -> a checked ``RunConfig``."""
    import yaml

    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise RunError(f"{path}: no such config file")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise RunError(f"{path}: not valid YAML ({err})") from None
    for item in overrides:
        if "=" not in item:
            raise RunError(f"override {item!r} must be key=value (e.g. optim.lr=3e-4)")
        key, _, text = item.partition("=")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RunError(f"override {key}: {part} is not a section")
        node[parts[-1]] = _parse_value(text)
    cfg = _build(RunConfig, data)
    check_choice("optim.optimizer", cfg.optim.optimizer, OPTIMIZERS)
    check_choice("optim.schedule", cfg.optim.schedule, SCHEDULES)
    check_choice("data.augment_on", cfg.data.augment_on, ("loader", "device"))
    check_choice("data.decoder", cfg.data.decoder, ("pyav", "torchcodec"))  # data.decode.DECODERS, without torch
    if cfg.lora < 0:
        raise RunError(f"lora must be a rank >= 1 (0 = off); got {cfg.lora}")
    if cfg.lora and not cfg.pretrained:
        raise RunError("lora adapts pretrained weights: set pretrained (timesformer finetune --pretrained ...)")
    if not 0 < cfg.optim.layer_decay <= 1:
        raise RunError(f"optim.layer_decay must be in (0, 1] (1 = off); got {cfg.optim.layer_decay}")
    if not isinstance(cfg.data.max_pixels, int) or cfg.data.max_pixels < 1:
        raise RunError(f"data.max_pixels must be a positive pixel count (width x height); got {cfg.data.max_pixels!r}")
    return cfg


def check_choice(key: str, value, names: tuple[str, ...]) -> None:
    """``RunError`` unless ``value`` is one of ``names``, naming both."""
    if value not in names:
        raise RunError(f"{key} must be {' or '.join(map(repr, names))}; got {value!r}")


def run_config_for(
    config: str | Path | None = None,
    overrides: list[str] = (),
    *,
    resume: str | Path | None = None,
    pretrained: str | None = None,
    freeze_backbone: bool = False,
    device: str | None = None,
) -> tuple[RunConfig, list[tuple[str, object, object]]]:
    """The config ``train`` and ``finetune`` run, and what the overrides change in a resumed run's own.

    A new run: ``config`` (a YAML file, optional) with the overrides on top; fine-tuning (``pretrained`` without
    ``freeze_backbone``) adds the official stochastic depth, 0.1, unless ``model_args.drop_path_rate`` is set.
    ``resume``: a run folder (``runs/<name>``), continued as it was configured -- its own ``config.yaml``, where it
    is -- with the overrides on top; the changes list says what they change (``changes``; empty for a new run).
    ``device`` and ``pretrained`` / ``freeze_backbone`` are overrides of ``optim.device`` and of the top-level
    keys."""
    overrides = list(overrides)
    if device:
        overrides.append(f"optim.device={device}")
    if pretrained:
        overrides += [f"pretrained={pretrained}"] + (["freeze_backbone=true"] if freeze_backbone else [])
    if not resume:
        cfg = load_run_config(config, overrides)
        if pretrained and not freeze_backbone and "drop_path_rate" not in cfg.model_args:
            cfg.model_args["drop_path_rate"] = 0.1  # fine-tuning: the official rate (not for a frozen backbone)
        return cfg, []
    if config:
        raise RunError(
            "--resume continues the run with its own config.yaml; give changes as key=value overrides, not --config"
        )
    run = Path(resume)
    if not (run / "config.yaml").is_file():
        raise RunError(f"{run}: no config.yaml; --resume takes a run folder (runs/<name>)")
    saved = load_run_config(run / "config.yaml")
    cfg = load_run_config(run / "config.yaml", overrides)
    saved.out = cfg.out = str(run.parent)
    saved.name = cfg.name = run.name
    return cfg, changes(saved, cfg)


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


# A resumed run keeps what its weights, its optimiser state and its position mean: the model, its classes, the data,
# the seed that orders it and the optimiser. The optimiser's settings, epochs, batch size, the device, precision,
# time limits and loader workers may change.
_FIXED_ON_RESUME = (
    "model",
    "model_args",
    "pretrained",
    "freeze_backbone",
    "data",
    "optim.seed",
    "optim.optimizer",
    "optim.layer_decay",  # it shapes the optimiser's parameter groups
    "lora",  # the adapters are the weights
    "lora_alpha",
    "lora_targets",
)
_FREE_ON_RESUME = ("data.workers",)


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):  # model_args: each key on its own; an empty one adds nothing
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changes(old: RunConfig, new: RunConfig) -> list[tuple[str, object, object]]:
    """``(key, old value, new value)`` for every field that differs, in the config's order; a ``model_args`` key set
    on one side only shows ``"unset"`` on the other. Name and out are left aside: they say where the run is."""
    a, b = _flatten(to_dict(old)), _flatten(to_dict(new))
    keys = list(a) + [k for k in b if k not in a]
    return [
        (k, a.get(k, "unset"), b.get(k, "unset"))
        for k in keys
        if k not in ("name", "out") and a.get(k, "unset") != b.get(k, "unset")
    ]


def check_resume(saved: RunConfig, cfg: RunConfig) -> list[tuple[str, object, object]]:
    """The changes ``cfg`` makes to a run's ``saved`` config; ``RunError`` naming the first field a resume can't
    change (architecture, classes, data)."""
    diff = changes(saved, cfg)
    for key, was, now in diff:
        if key not in _FREE_ON_RESUME and any(key == f or key.startswith(f + ".") for f in _FIXED_ON_RESUME):
            raise RunError(
                f"{key}: the run has {was}, this resume asks for {now}; a resumed run keeps its model, "
                f"classes, data, seed and optimiser (start a new run, or finetune from its checkpoint)"
            )
    return diff
