"""The seed's ``timesformer-pytorch`` (0.4.1) state dicts -> the ``lucidrains`` preset.

The seed's patch embedding is ``Linear`` over ``(p1 p2 c)``-flattened patches; ours is the equivalent
``Conv2d`` (weight rearranged ``d (p1 p2 c) -> d c p1 p2``). Its rotary modules hold only constant buffers
(``inv_freqs``, ``scales``), which are dropped; note that its temporal rotary is not a true rotation (see
``model/embeddings.py``), so a rotary seed model does not give equal logits here -- the learned-table ones do.
"""

from __future__ import annotations

import math

from einops import rearrange

from ..model import TimeSformerConfig, get_config
from .common import LoadReport, rename

KEYS = [  # (ours, seed); "fn.fn" when the seed wraps sublayers in PreTokenShift is folded first
    ("blocks.{i}.temporal_norm1", "layers.{i}.0.norm"),
    ("blocks.{i}.temporal_attn.qkv", "layers.{i}.0.fn.to_qkv"),
    ("blocks.{i}.temporal_attn.proj", "layers.{i}.0.fn.to_out.0"),
    ("blocks.{i}.norm1", "layers.{i}.1.norm"),
    ("blocks.{i}.attn.qkv", "layers.{i}.1.fn.to_qkv"),
    ("blocks.{i}.attn.proj", "layers.{i}.1.fn.to_out.0"),
    ("blocks.{i}.norm2", "layers.{i}.2.norm"),
    ("blocks.{i}.mlp.fc1", "layers.{i}.2.fn.net.0"),
    ("blocks.{i}.mlp.fc2", "layers.{i}.2.fn.net.3"),
    ("norm", "to_out.0"),
    ("head", "to_out.1"),
    ("cls_token", "cls_token"),
    ("pos_embed", "pos_emb.weight"),
]
BUFFERS = ("frame_rot_emb.inv_freqs", "image_rot_emb.scales")


def is_lucidrains(state: dict) -> bool:
    return "to_patch_embedding.weight" in state


def from_lucidrains(state: dict, channels: int = 3) -> tuple[dict, LoadReport]:
    report = LoadReport(dropped=[k for k in state if k in BUFFERS])
    state = {k.replace(".fn.fn.", ".fn."): v for k, v in state.items() if k not in BUFFERS}
    out = rename(state, KEYS, reverse=True)
    w = out.pop("to_patch_embedding.weight")
    p = math.isqrt(w.shape[1] // channels)
    out["patch_embed.proj.weight"] = rearrange(w, "d (p1 p2 c) -> d c p1 p2", p1=p, p2=p, c=channels)
    out["patch_embed.proj.bias"] = out.pop("to_patch_embedding.bias")
    out["cls_token"] = out["cls_token"].reshape(1, 1, -1)
    if "pos_embed" in out:
        out["pos_embed"] = out["pos_embed"].unsqueeze(0)
    return out, report


def infer_config(state: dict, **overrides) -> TimeSformerConfig:
    """Config of a seed state dict: shapes give dim, depth, patch size, classes, token shift and the table;
    ``heads`` (default 8, the seed's), ``dim_head`` (default 64), ``num_frames`` and ``image_size`` come from
    overrides where the shapes can't tell (with a learned table, frames x grid must match its length)."""
    dim, patch_dim = state["to_patch_embedding.weight"].shape
    channels = overrides.get("channels", 3)
    patch = math.isqrt(patch_dim // channels)
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("layers."))
    heads = overrides.get("heads", 8)
    dim_head = overrides.get(
        "dim_head",
        state[
            "layers.0.0.fn.to_qkv.weight"
            if "layers.0.0.fn.to_qkv.weight" in state
            else "layers.0.0.fn.fn.to_qkv.weight"
        ].shape[0]
        // (3 * heads),
    )
    found = dict(
        dim=dim,
        patch_size=patch,
        channels=channels,
        depth=depth,
        heads=heads,
        dim_head=dim_head,
        num_classes=state["to_out.1.weight"].shape[0],
        shift_tokens=any(".fn.fn." in k for k in state),
        pos_emb="learned_joint" if "pos_emb.weight" in state else "rotary",
    )
    cfg = get_config("lucidrains", **{**found, **{k: v for k, v in overrides.items() if k not in found}})
    if cfg.pos_emb == "learned_joint":
        rows = state["pos_emb.weight"].shape[0]
        if rows != cfg.num_frames * cfg.grid**2 + 1:
            raise ValueError(
                f"the seed's pos_emb has {rows} rows but num_frames={cfg.num_frames} x "
                f"({cfg.image_size}/{cfg.patch_size})^2 + 1 = {cfg.num_frames * cfg.grid**2 + 1}; "
                f"pass the num_frames and image_size the model was built with"
            )
    return cfg
