"""facebookresearch/TimeSformer checkpoints <-> ours.

Our parameter names are the official ones (``blocks.N.temporal_attn.qkv`` ...); the official files wrap them
as ``{"model_state": {"model.<name>": tensor}, "optimizer_state", "epoch", "cfg"}``.
"""

from __future__ import annotations

import math

from ..model import TimeSformerConfig
from .common import strip_prefix

PREFIX = "model."


def from_official(state: dict) -> dict:
    return strip_prefix(state, PREFIX)


def to_official(state: dict) -> dict:
    return {PREFIX + k: v for k, v in state.items()}


def infer_config(state: dict, **overrides) -> TimeSformerConfig:
    """Build the config of an official-architecture state dict (our names) from its tensor shapes.

    Shapes give dim, depth, patch size, image size, frames, classes, MLP ratio, qkv bias and the scheme
    (divided if ``temporal_*`` keys exist; else joint if a time table exists; else space-only). The number
    of heads cannot be read from shapes: it defaults to ``dim // 64`` (12 for ViT-B) unless ``heads`` is given.
    """
    try:
        dim = state["cls_token"].shape[-1]
        patch = state["patch_embed.proj.weight"].shape[-1]
        channels = state["patch_embed.proj.weight"].shape[1]
        grid = math.isqrt(state["pos_embed"].shape[1] - 1)
    except KeyError as err:
        raise ValueError(f"not an official TimeSformer state dict: no {err.args[0]!r} key") from None
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    if "blocks.0.temporal_attn.qkv.weight" in state:
        attention = "divided"
    else:
        attention = "joint" if "time_embed" in state else "space"
    found = dict(
        dim=dim,
        patch_size=patch,
        channels=channels,
        image_size=grid * patch,
        depth=depth,
        attention=attention,
        mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / dim,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        pos_emb="learned",
        num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0,
    )
    if "time_embed" in state:
        found["num_frames"] = state["time_embed"].shape[1]
    heads = overrides.get("heads", max(dim // 64, 1))
    found.update(heads=heads, dim_head=overrides.get("dim_head", dim // heads))
    for key, value in overrides.items():  # an override may only say what the shapes cannot
        if key in found and key not in ("heads", "dim_head", "num_frames") and found[key] != value:
            raise ValueError(f"override {key}={value!r} contradicts the checkpoint, whose shapes say {found[key]!r}")
        found[key] = value
    if found["heads"] * found["dim_head"] != dim:
        raise ValueError(f"heads {found['heads']} x dim_head {found['dim_head']} must equal the checkpoint's dim {dim}")
    return TimeSformerConfig().replace(**found)
