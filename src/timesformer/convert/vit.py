"""Image-model initialisation (the paper's recipe): ViT weights -> a TimeSformer.

Accepts timm naming (``vit_base_patch16_224``: ``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``), Hugging Face ``ViTModel``
naming of transformers 4 and 5 (separate q, k, v projections, fused here), and the mmcv naming of the ViT file
mmaction2 ships for TimeSformer (``transformer_layers.layers.N.{norms.0, attentions.0.attn.in_proj_weight,
attentions.0.attn.out_proj, norms.1, ffns.0.layers.0.0, ffns.0.layers.1}``, ``patch_embed.projection``;
``in_proj`` holds q, k, v stacked as ``qkv`` does). Spatial attention, MLP, norms and embeddings are copied
(position table resized to the grid), temporal attention starts as a copy of the spatial one (as the
official ``load_pretrained`` does), ``temporal_fc`` and the time table stay at zero, and the classifier is
kept as initialised. So a clip of T identical frames gives the image model's features for that frame.
"""

from __future__ import annotations

import re

import torch

from ..model import TimeSformer
from ..model.embeddings import resample_pos_embed
from .common import rename, strip_prefix

_PRE_STAGE = re.compile(r"^blocks\.(\d+)\.(?:temporal|local|width)_(norm1|attn)")
_V4 = "encoder.layer.{i}"  # transformers 4.x ViTModel
_V5 = "layers.{i}"  # transformers 5.x ViTModel
HF_VIT = [  # (timm, HF ViTModel 4.x and 5.x)
    ("cls_token", "embeddings.cls_token"),
    ("pos_embed", "embeddings.position_embeddings"),
    ("patch_embed.proj", "embeddings.patch_embeddings.projection"),
    ("blocks.{i}.norm1", f"{_V4}.layernorm_before"),
    ("blocks.{i}.attn.proj", f"{_V4}.attention.output.dense"),
    ("blocks.{i}.norm2", f"{_V4}.layernorm_after"),
    ("blocks.{i}.mlp.fc1", f"{_V4}.intermediate.dense"),
    ("blocks.{i}.mlp.fc2", f"{_V4}.output.dense"),
    ("blocks.{i}.norm1", f"{_V5}.layernorm_before"),
    ("blocks.{i}.attn.proj", f"{_V5}.attention.o_proj"),
    ("blocks.{i}.norm2", f"{_V5}.layernorm_after"),
    ("blocks.{i}.mlp.fc1", f"{_V5}.mlp.fc1"),
    ("blocks.{i}.mlp.fc2", f"{_V5}.mlp.fc2"),
    ("norm", "layernorm"),
]
_MM = "transformer_layers.layers.{i}"
MMCV_VIT = [  # (timm, mmcv / mmaction2)
    ("patch_embed.proj", "patch_embed.projection"),
    ("blocks.{i}.norm1", f"{_MM}.norms.0"),
    ("blocks.{i}.attn.qkv.weight", f"{_MM}.attentions.0.attn.in_proj_weight"),
    ("blocks.{i}.attn.qkv.bias", f"{_MM}.attentions.0.attn.in_proj_bias"),
    ("blocks.{i}.attn.proj", f"{_MM}.attentions.0.attn.out_proj"),
    ("blocks.{i}.norm2", f"{_MM}.norms.1"),
    ("blocks.{i}.mlp.fc1", f"{_MM}.ffns.0.layers.0.0"),
    ("blocks.{i}.mlp.fc2", f"{_MM}.ffns.0.layers.1"),
]
# separate q, k, v projections (fused into qkv below): prefix template and the three names
QKV_SPLIT = [
    (f"{_V4}.attention.attention", ("query", "key", "value")),
    (f"{_V5}.attention", ("q_proj", "k_proj", "v_proj")),
]


def vit_to_timm(state: dict) -> dict:
    """HF ``ViTModel``/``ViTForImageClassification`` keys (transformers 4 or 5) or mmcv keys -> timm keys, with
    q, k and v fused into ``qkv`` (q rows first, then k, then v: the layout timm and our ``qkv`` use)."""
    state = strip_prefix(strip_prefix(state, "vit."), "backbone.")
    if any(k.startswith("transformer_layers.layers.") for k in state):
        return rename(state, MMCV_VIT, reverse=True)
    if "embeddings.cls_token" not in state:
        return state  # already timm
    out = rename(state, HF_VIT, reverse=True)
    for template, names in QKV_SPLIT:
        head = template.split("{i}")[0]
        indices = {int(k[len(head) :].split(".")[0]) for k in out if k.startswith(head)}
        for i in sorted(indices):
            base = template.format(i=i)
            for kind in ("weight", "bias"):
                parts = [out.pop(f"{base}.{n}.{kind}", None) for n in names]
                if all(p is not None for p in parts):
                    out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
    return {k: v for k, v in out.items() if not k.startswith(("pooler.", "classifier."))}


def from_image_vit(state: dict, model: TimeSformer) -> dict:
    """A full state dict for ``model`` from ViT weights (timm or HF naming): see the module docstring."""
    vit = vit_to_timm(state)
    own = model.state_dict()
    out = {}
    for key, value in own.items():
        if key == "pos_embed":
            out[key] = resample_pos_embed(vit[key], (model.config.grid, model.config.grid))
        elif key.startswith("head.") or key == "time_embed" or "_fc." in key:
            out[key] = value  # classifier as initialised; time table and temporal_fc at zero
        elif _PRE_STAGE.match(key):  # temporal (local, width) attention starts as the spatial one
            out[key] = vit[_PRE_STAGE.sub(r"blocks.\1.\2", key)].clone()
        else:
            if key not in vit:
                raise ValueError(f"image ViT weights lack {key!r} (have e.g. {sorted(vit)[:6]})")
            out[key] = vit[key]
    return out
