"""Load the weights people hold, save ours, and write Hugging Face folders.

Formats (``load_pretrained`` detects them):

* ``native``: our ``save_pretrained`` folder (``model.safetensors`` + ``config.json`` with ``"format": "timesformer"``);
* ``hf``: a Hugging Face folder (``config.json`` with ``model_type: timesformer``, ``model.safetensors`` or
  ``pytorch_model.bin``, optional ``preprocessor_config.json``) or a hub id such as
  ``facebook/timesformer-base-finetuned-k400`` (through ``huggingface_hub``; its cache works offline);
* ``official``: facebookresearch ``.pyth``/``.pth`` (``model_state`` with ``model.`` keys);
* ``mmaction2``: ``state_dict`` with ``backbone.transformer_layers...`` keys;
* ``lucidrains``: a ``timesformer-pytorch`` state dict.

Nothing is unpickled beyond tensors and plain containers: safetensors, or ``torch.load(weights_only=True)``.

The models built here are the network of ``timesformer.model``; the top-level ``timesformer.load_pretrained`` and
``timesformer.create_model`` hand them out as ``timesformer.TimeSformer`` (``hub.py``: the Hub's methods added).
Imports go one way: ``hub`` builds on this module, never the reverse.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from pathlib import Path

import torch

from .convert.common import check_state
from .convert.hf import HF_ATTENTION, from_hf, to_hf
from .convert.lucidrains import from_lucidrains, is_lucidrains
from .convert.lucidrains import infer_config as lucidrains_config
from .convert.mmaction import from_mmaction, is_mmaction
from .convert.official import from_official
from .convert.official import infer_config as official_config
from .convert.vit import from_image_vit
from .errors import UserError, user_input
from .files import save_folder, write_json_atomic
from .model import TimeSformer, TimeSformerConfig, get_config
from .model import create_model as registry_create_model

FORMATS = ("native", "hf", "official", "mmaction2", "lucidrains")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
log = logging.getLogger(__name__)


# --- reading files --------------------------------------------------------------------------------------
def read_state(path: str | os.PathLike) -> dict:
    """Tensors of a ``.safetensors`` file, or of a torch pickle loaded with ``weights_only=True``.

    Raises ``ValueError`` naming the file for anything unreadable, truncated or needing arbitrary code.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error types for truncated/corrupt headers
            raise UserError(f"{path}: not a readable safetensors file ({err})") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        code = _pickled_globals(path, str(err))
        if code:
            raise UserError(
                f"{path}: refused: the file holds pickled Python objects beyond tensors ({code}), and "
                f"loading those could run arbitrary code. Re-save just the state dict, e.g. "
                f"torch.save(ckpt['model_state'], 'weights.pth'), with code you trust"
            ) from None
        import zipfile

        if zipfile.is_zipfile(path):
            first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
            raise UserError(f"{path}: not a readable checkpoint (corrupt?): {first[:160]}") from None
        raise UserError(
            f"{path}: not a readable checkpoint (truncated or corrupt?): neither a complete PyTorch zip "
            f"archive nor a pickle of tensors"
        ) from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a dict of tensors (a state dict or checkpoint); got {type(obj).__name__}")
    return obj


# globals that torch's own files (and plain state dicts) pickle; anything else is what a refused file holds
_SAFE_GLOBALS = (
    "torch.",
    "collections.OrderedDict",
    "builtins.set",
    "builtins.frozenset",
    "builtins.bytearray",
    "_codecs.encode",
    "numpy.core.multiarray._reconstruct",
    "numpy.dtype",
    "numpy.ndarray",
)


def _pickled_globals(path: Path, error: str) -> str:
    """Why ``weights_only`` refused a file, if it is because of pickled code: the globals it names. Scans the
    pickle's opcodes with ``pickletools`` (which parses, never executes) -- a raw pickle, or the ``data.pkl``
    inside torch's zip format; '' for a file that is simply corrupt."""
    import io
    import pickletools
    import zipfile

    found = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", error)
    if found:
        return ", ".join(found)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                pkl = next((n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"), None)
                if pkl is None:
                    return ""
                ops = list(pickletools.genops(io.BytesIO(archive.read(pkl))))
        else:
            with open(path, "rb") as f:
                ops = list(pickletools.genops(f))
    except Exception:  # not a pickle at all
        return ""
    names, strings = [], []
    for op, arg, _ in ops:
        if op.name in ("GLOBAL", "INST"):
            names.append(str(arg).replace(" ", "."))
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            names.append(f"{strings[-2]}.{strings[-1]}")
        elif "UNICODE" in op.name or "STRING" in op.name:
            strings.append(str(arg))
    unsafe = sorted({n for n in names if not n.startswith(_SAFE_GLOBALS)})
    return ", ".join(unsafe)


PRIMARY_ENTRIES = ("model_state", "state_dict", "model")  # official, mmaction2/Lightning/timm, plain
# the other copies: timm's EMA (state_dict_ema, model_ema), ours and others (ema), and mmengine's ema_state_dict
# -- which, after mmengine's EMA hook swaps the two at saving, holds the raw weights while state_dict holds the
# averaged ones
EMA_ENTRIES = ("model_ema", "state_dict_ema", "ema_state_dict", "ema")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / DataParallel / EMA wrappers; torch.compile
_EMA_COUNTERS = ("steps", "n_averaged")  # buffers of mmengine's and torch's averaged-model wrappers


def select_state(obj: dict, source, entry: str | None = None) -> dict:
    """The tensors of one state dict in a checkpoint file, unwrapped.

    A file may hold several (the model and an EMA copy): ``entry`` picks one by its key; by default the model
    is taken and the choice is logged. Prefixes that wrappers add (``module.`` from DDP or an EMA wrapper,
    ``_orig_mod.`` from ``torch.compile``) and EMA step counters are dropped.
    """
    entries = [k for k in PRIMARY_ENTRIES + EMA_ENTRIES if _is_state(obj.get(k))]
    if entry is not None:
        if not _is_state(obj.get(entry)):
            raise UserError(f"{source}: no state dict under {entry!r}; it holds {entries or sorted(obj)[:8]}")
        chosen = entry
    else:
        chosen = entries[0] if entries else None
        if len(entries) > 1:
            log.warning(
                "%s holds %d state dicts (%s): loading %r; pass entry= (--entry) for another",
                source,
                len(entries),
                ", ".join(entries),
                chosen,
            )
        elif chosen in EMA_ENTRIES:
            log.warning("%s holds only %r: loading it", source, chosen)
    state = {k: v for k, v in (obj[chosen] if chosen else obj).items() if isinstance(v, torch.Tensor)}
    while True:
        keys = [k for k in state if k not in _EMA_COUNTERS]
        prefix = next((p for p in _WRAPPER_PREFIXES if keys and all(k.startswith(p) for k in keys)), None)
        if prefix is None:
            break
        state = {k[len(prefix) :]: v for k, v in state.items() if k not in _EMA_COUNTERS}
    if not state:
        raise UserError(f"{source}: holds no tensors (keys: {sorted(obj)[:8]})")
    return state


def _is_state(value) -> bool:
    return isinstance(value, dict) and any(isinstance(v, torch.Tensor) for v in value.values())


def detect_format(path: str | os.PathLike, state: dict | None = None) -> str:
    """Which of ``FORMATS`` a folder or file is, by its config or by marker keys."""
    path = Path(path)
    if path.is_dir():
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            raise UserError(f"{path}: a folder without config.json; expected a save_pretrained or Hugging Face folder")
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("format") == "timesformer":
            return "native"
        if cfg.get("model_type") == "timesformer":
            return "hf"
        raise UserError(
            f"{cfg_path}: neither our config (format: timesformer) nor a Hugging Face Timesformer "
            f"config (model_type: timesformer); got model_type={cfg.get('model_type')!r}"
        )
    keys = set(state)
    if any(k.startswith("timesformer.") for k in keys):
        return "hf"
    if is_mmaction(state):
        return "mmaction2"
    if is_lucidrains(state):
        return "lucidrains"
    if any(k.startswith("model.blocks.") for k in keys):
        return "official"
    if "patch_embed.proj.weight" in keys and any(k.startswith("blocks.") for k in keys):
        return "official"  # official names without the wrapper prefix (also our bare state dicts)
    raise UserError(f"{path}: unrecognised checkpoint format; keys start {sorted(keys)[:6]}. Expected one of {FORMATS}")


# --- configs ----------------------------------------------------------------------------------------------
def config_from_hf(hf: dict, preprocessor: dict | None = None, **overrides) -> TimeSformerConfig:
    """TimeSformerConfig from a Hugging Face ``config.json`` (and ``preprocessor_config.json``)."""
    attention = hf.get("attention_type", "divided_space_time")
    if attention not in HF_ATTENTION:
        raise UserError(f"HF attention_type must be one of {sorted(HF_ATTENTION)}; got {attention!r}")
    dim, heads = hf.get("hidden_size", 768), hf.get("num_attention_heads", 12)
    id2label = hf.get("id2label") or {}
    labels = tuple(id2label[k] for k in sorted(id2label, key=int)) if id2label else None
    fields = dict(
        num_classes=len(labels) if labels else hf.get("num_labels", 2),
        num_frames=hf.get("num_frames", 8),
        image_size=hf.get("image_size", 224),
        patch_size=hf.get("patch_size", 16),
        channels=hf.get("num_channels", 3),
        dim=dim,
        depth=hf.get("num_hidden_layers", 12),
        heads=heads,
        dim_head=dim // heads,
        mlp_ratio=hf.get("intermediate_size", 4 * dim) / dim,
        attention=HF_ATTENTION[attention],
        qkv_bias=hf.get("qkv_bias", True),
        norm_eps=hf.get("layer_norm_eps", 1e-6),
        drop_rate=hf.get("hidden_dropout_prob", 0.0),
        attn_drop_rate=hf.get("attention_probs_dropout_prob", 0.0),
        drop_path_rate=hf.get("drop_path_rate", 0.0),
        labels=labels,
    )
    if preprocessor:
        if "image_mean" in preprocessor:
            fields["mean"] = tuple(preprocessor["image_mean"])
        if "image_std" in preprocessor:
            fields["std"] = tuple(preprocessor["image_std"])
    if hf.get("hidden_act", "gelu") != "gelu":
        raise UserError(f"HF hidden_act must be 'gelu'; got {hf.get('hidden_act')!r}")
    sampling = hf.get("timesformer_sampling")  # written by our export_hf
    if isinstance(sampling, dict):
        fields.update({k: sampling[k] for k in ("sampling", "sampling_rate", "fps") if k in sampling})
    return TimeSformerConfig().replace(**{**fields, **overrides})


def config_to_hf(cfg: TimeSformerConfig) -> dict:
    """A Hugging Face ``config.json`` for an official-architecture model."""
    to_hf_attention = {v: k for k, v in HF_ATTENTION.items()}
    problems = [
        f"{k}={getattr(cfg, k)!r} (HF needs {v!r})"
        for k, v in dict(pos_emb="learned", mlp="gelu", cls_attention="average", shift_tokens=False).items()
        if getattr(cfg, k) != v
    ]
    if cfg.attention not in to_hf_attention:
        problems.append(f"attention={cfg.attention!r} (HF has {sorted(to_hf_attention)})")
    if cfg.attention == "divided" and not cfg.temporal_fc:
        problems.append("temporal_fc=False (HF always has temporal_dense)")
    if cfg.dim_head * cfg.heads != cfg.dim:
        problems.append(f"heads x dim_head = {cfg.heads * cfg.dim_head} != dim {cfg.dim}")
    if problems:
        raise UserError("this model cannot be written in Hugging Face's Timesformer format: " + ", ".join(problems))
    labels = cfg.labels or tuple(f"LABEL_{i}" for i in range(cfg.num_classes))
    return {
        "architectures": ["TimesformerForVideoClassification"],
        "model_type": "timesformer",
        "image_size": cfg.image_size,
        "patch_size": cfg.patch_size,
        "num_channels": cfg.channels,
        "num_frames": cfg.num_frames,
        "hidden_size": cfg.dim,
        "num_hidden_layers": cfg.depth,
        "num_attention_heads": cfg.heads,
        "intermediate_size": int(cfg.dim * cfg.mlp_ratio),
        "hidden_act": "gelu",
        "hidden_dropout_prob": cfg.drop_rate,
        "attention_probs_dropout_prob": cfg.attn_drop_rate,
        "initializer_range": 0.02,
        "layer_norm_eps": cfg.norm_eps,
        "qkv_bias": cfg.qkv_bias,
        # transformers 5 annotates drop_path_rate as int and validates it: write whole numbers as int
        "attention_type": to_hf_attention[cfg.attention],
        "drop_path_rate": int(cfg.drop_path_rate) if float(cfg.drop_path_rate).is_integer() else cfg.drop_path_rate,
        "id2label": {str(i): name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)},
        # ours, beside HF's fields (transformers keeps unknown keys): how clips were sampled
        "timesformer_sampling": {"sampling": cfg.sampling, "sampling_rate": cfg.sampling_rate, "fps": cfg.fps},
    }


# --- loading ----------------------------------------------------------------------------------------------
def _hub_download(repo_id: str) -> Path:
    """The local folder of a hub model: downloaded when online, from the cache when offline."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UserError(
            f"{repo_id!r} is not a local path; loading hub names needs `pip install huggingface_hub`"
        ) from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt"]))
    except Exception as err:
        raise UserError(f"{repo_id!r}: not a local path, and the hub download failed ({err})") from None


def _labels_beside(path: Path) -> tuple | None:
    """Class names from ``labels.txt`` (one per line) or ``labels.json`` (a list) beside a checkpoint."""
    folder = path if path.is_dir() else path.parent
    if (folder / "labels.json").is_file():
        return tuple(json.loads((folder / "labels.json").read_text()))
    if (folder / "labels.txt").is_file():
        return tuple(line.strip() for line in (folder / "labels.txt").read_text().splitlines() if line.strip())
    return None


def load_pretrained(
    path: str | os.PathLike, format: str | None = None, entry: str | None = None, **overrides
) -> TimeSformer:
    """Build and strictly load a model from any supported format (see the module docstring).

    Args:
        path: a folder, a file, or a Hugging Face hub id.
        format: one of ``FORMATS``; detected when None.
        entry: for a file holding several state dicts (a model and its EMA, e.g. ``"state_dict_ema"``), which
            one; by default the model, and the choice is logged.
        overrides: config fields the checkpoint can't tell (``heads``, ``num_frames``, ``image_size``, ...) or
            should change (``attn_impl``, ``drop_path_rate``, ...). An override that contradicts the tensor shapes
            is an error.

    Returns:
        The model in eval mode, with ``model.config.labels`` when the checkpoint names its classes, and the
        preprocessing it was trained with (``mean``/``std``, ``sampling``/``sampling_rate``/``fps``) when the
        file records it or its format implies it.
    """
    if format is not None and format not in FORMATS:
        raise UserError(f"format must be one of {FORMATS}; got {format!r}")
    path = Path(path)
    if not path.exists() and _HUB_ID.match(str(path)):
        path = _hub_download(str(path))
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")

    with user_input():  # the converters' and the model's checks of what the file and the overrides say
        cfg, state = _config_and_state(path, format, entry, overrides)
        model = TimeSformer(cfg)
        check_state(model, state, str(path))
    model.load_state_dict(state, strict=True)
    return model.eval()


def _config_and_state(
    path: Path, format: str | None, entry: str | None, overrides: dict
) -> tuple[TimeSformerConfig, dict]:
    """The config a checkpoint (with ``overrides``) describes and its state dict in our names."""
    if path.is_dir():
        format = format or detect_format(path)
        weights = next((path / f for f in WEIGHT_FILES if (path / f).is_file()), None)
        if weights is None:
            raise UserError(f"{path}: no weights file; expected one of {WEIGHT_FILES}")
        state = select_state(read_state(weights), weights, entry)
        config_json = json.loads((path / "config.json").read_text())
        if format == "native":
            cfg = _native_config(config_json, path / "config.json", overrides)
        elif format == "hf":
            pre = path / "preprocessor_config.json"
            cfg = config_from_hf(config_json, json.loads(pre.read_text()) if pre.is_file() else None, **overrides)
            recorded = config_json.get("timesformer_sampling")
            cfg = _guess_sampling(cfg, {**(recorded if isinstance(recorded, dict) else {}), **overrides}, path)
            state = from_hf(state)
        else:
            raise UserError(f"{path}: format {format!r} is a single file, not a folder")
    else:
        raw = read_state(path)
        state = select_state(raw, path, entry)
        if format is None:
            format, state = _detect_wrapped(path, state)
        recorded = {**_recorded_preprocessing(raw, format, path), **overrides}
        if format == "lucidrains":
            cfg = lucidrains_config(state, **recorded)
            state, _ = from_lucidrains(state, channels=cfg.channels)
        else:
            state = {"hf": from_hf, "mmaction2": from_mmaction, "official": from_official, "native": from_official}[
                format
            ](state)
            cfg = official_config(state, **recorded)
        cfg = _guess_sampling(cfg, recorded, path)
    if cfg.labels is None and cfg.num_classes:
        labels = _labels_beside(path)
        if labels is not None:
            cfg = cfg.replace(labels=labels)
    return cfg, state


def _detect_wrapped(path: Path, state: dict) -> tuple[str, dict]:
    """The format of ``state``; if none is recognised and every key shares a first component (a Lightning
    module's attribute, ``net.`` ...), the format of what follows it, that prefix dropped (and logged)."""
    try:
        return detect_format(path, state), state
    except UserError as err:
        heads = {k.split(".", 1)[0] for k in state}
        if len(heads) != 1 or not all("." in k for k in state):
            raise
        prefix = heads.pop() + "."
        inner = {k[len(prefix) :]: v for k, v in state.items()}
        try:
            format = detect_format(path, inner)
        except UserError:
            raise err from None  # the error names the keys as the file has them
        log.warning("%s: dropped the key prefix %r every tensor carries (a wrapper's attribute)", path, prefix)
        return format, inner


# mmaction2's TimeSformer configs normalise 0-255 pixels with mean 127.5 and std 127.5
_MMACTION_NORM = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
SSV2_CLASSES = 174


def _recorded_preprocessing(raw: dict, format: str, path: Path) -> dict:
    """What a checkpoint file says (or its format implies) about the input it was trained on: mean/std and the
    sampling protocol. The official files carry their config (``cfg``, YAML): DATA.MEAN/STD,
    DATA.SAMPLING_RATE, DATA.TARGET_FPS, and TRAIN.DATASET (``ssv2``: segment sampling)."""
    if format == "mmaction2":
        return dict(_MMACTION_NORM)
    if format != "official" or not isinstance(raw.get("cfg"), str):
        return {}
    import yaml

    try:
        cfg = yaml.safe_load(raw["cfg"])
    except yaml.YAMLError:
        log.warning("%s: its 'cfg' is not readable YAML; the official defaults are used", path)
        return {}
    data = (cfg or {}).get("DATA", {}) or {}
    found = {}
    if isinstance(data.get("MEAN"), list) and isinstance(data.get("STD"), list):
        found.update(mean=tuple(data["MEAN"]), std=tuple(data["STD"]))
    dataset = str(((cfg or {}).get("TRAIN", {}) or {}).get("DATASET", "")).lower()
    if dataset == "ssv2":
        found["sampling"] = "segment"
    elif isinstance(data.get("SAMPLING_RATE"), int):
        found.update(sampling="dense", sampling_rate=data["SAMPLING_RATE"])
    if isinstance(data.get("TARGET_FPS"), (int, float)):
        found["fps"] = float(data["TARGET_FPS"])
    return found


# the official Kinetics models' dense sampling rate by frame count: 8 x 32, TimeSformer-HR 16 x 16, -L 96 x 4
_OFFICIAL_RATE = {8: 32, 16: 16, 96: 4}


def _guess_sampling(cfg: TimeSformerConfig, told: dict, path: Path) -> TimeSformerConfig:
    """A file that doesn't record its sampling: the official Kinetics protocol for its frame count (dense 8 x 32,
    16 x 16, 96 x 4 at 30 fps), unless it has Something-Something-V2's 174 classes (segment sampling) -- said in
    the log, since that is a guess."""
    if "sampling" in told:
        return cfg
    if cfg.num_classes == SSV2_CLASSES:
        log.warning(
            "%s records no sampling protocol; its %d classes are Something-Something-V2's: segment "
            "sampling (pass sampling=... to say otherwise)",
            path,
            SSV2_CLASSES,
        )
        return cfg.replace(sampling="segment")
    if "sampling_rate" in told:
        return cfg
    return cfg.replace(sampling_rate=_OFFICIAL_RATE.get(cfg.num_frames, max(256 // cfg.num_frames, 1)))


def _native_config(data: dict, where: Path, overrides: dict) -> TimeSformerConfig:
    fields = data.get("config")
    if not isinstance(fields, dict):
        raise UserError(f"{where}: no 'config' object")
    known = {f.name for f in dataclasses.fields(TimeSformerConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise UserError(f"{where}: unknown config key(s) {unknown}")
    if "sampling" not in fields and not {"sampling", "sampling_rate", "fps"} & set(overrides):
        # saved before configs recorded the protocol: what training and the commands used then
        log.warning(
            "%s records no sampling protocol (saved by an older version): dense, every 8th frame at 30 fps, "
            "as training and the commands used then",
            where,
        )
        fields = {**fields, **_LEGACY_NATIVE_SAMPLING}
    return TimeSformerConfig(**{**fields, **overrides})


_LEGACY_NATIVE_SAMPLING = dict(sampling="dense", sampling_rate=8, fps=30.0)


# --- writing ----------------------------------------------------------------------------------------------
def save_pretrained(model: TimeSformer, folder: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (our format; ``load_pretrained`` reads it back)."""
    config = {"format": "timesformer", "version": 1, "config": dataclasses.asdict(model.config)}
    return save_folder(folder, model.state_dict(), config)


def export_hf(model: TimeSformer, folder: str | os.PathLike) -> Path:
    """Write a folder that ``TimesformerForVideoClassification.from_pretrained`` loads with the same logits
    (for the official architecture; other settings raise ``ValueError`` naming what HF lacks). The
    preprocessing travels in ``preprocessor_config.json``."""
    cfg = model.config
    folder = save_folder(folder, to_hf(model.state_dict()), config_to_hf(cfg))
    pre = {
        "image_processor_type": "VideoMAEImageProcessor",
        "image_mean": list(cfg.mean),
        "image_std": list(cfg.std),
        "size": {"shortest_edge": cfg.image_size},
        "crop_size": {"height": cfg.image_size, "width": cfg.image_size},
        "do_center_crop": True,
        "do_normalize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
    }
    write_json_atomic(folder / "preprocessor_config.json", pre)
    return folder


def init_from_image_vit(model: TimeSformer, source) -> TimeSformer:
    """Initialise ``model`` from image ViT weights (a path, or a state dict in timm or HF ``ViTModel`` naming):
    the paper's recipe. See ``convert/vit.py``. Returns the model (modified in place)."""
    state = source if isinstance(source, dict) else select_state(read_state(source), source)
    with user_input():
        full = from_image_vit(state, model)
        check_state(model, full, str(source) if not isinstance(source, dict) else "image ViT state dict")
    model.load_state_dict(full, strict=True)
    return model


# what makes two models the same network (everything else -- classes, frames, size, preprocessing -- may differ)
ARCHITECTURE = (
    "dim",
    "depth",
    "heads",
    "dim_head",
    "patch_size",
    "mlp_ratio",
    "attention",
    "pos_emb",
    "mlp",
    "qkv_bias",
    "temporal_fc",
    "cls_attention",
    "shift_tokens",
)


def create_model(name: str, pretrained: str | os.PathLike | None = None, **overrides) -> TimeSformer:
    """A preset, as ``timesformer.model.create_model``; with ``pretrained`` (anything :func:`load_pretrained`
    reads: a folder, a file, a Hugging Face hub id such as ``"facebook/timesformer-base-finetuned-k400"``), its
    weights, in timm's style.

    The checkpoint must be the preset's network (an error names the fields that differ). ``num_classes`` different
    from the checkpoint's gives a new head for fine-tuning (the backbone keeps its weights); other overrides go to
    :func:`load_pretrained`.
    """
    if pretrained is None:
        with user_input():  # an unknown name, an override out of range
            return registry_create_model(name, **overrides)
    with user_input():
        preset = get_config(name)
    num_classes = overrides.pop("num_classes", None)
    model = load_pretrained(pretrained, **overrides)
    differ = [
        f"{k}: {getattr(preset, k)!r} in {name}, {getattr(model.config, k)!r} in {pretrained}"
        for k in ARCHITECTURE
        if getattr(preset, k) != getattr(model.config, k)
    ]
    if differ:
        raise UserError(f"{pretrained} is not a {name}: " + "; ".join(differ))
    if num_classes is not None and num_classes != model.config.num_classes:
        model.reset_classifier(num_classes)
    return model
