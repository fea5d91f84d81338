"""mmaction2 TimeSformer checkpoints -> ours.

mmaction2 names the same official architecture differently: ``backbone.transformer_layers.layers.N``
with ``attentions.0`` (temporal: ``norm``, ``attn`` an ``nn.MultiheadAttention``, ``temporal_fc``),
``attentions.1`` (spatial) and ``ffns.0`` (``norm``, ``layers.0.0`` = fc1, ``layers.1`` = fc2); joint and
space-only layers use ``attentions.0`` with ``norms.0`` / ``norms.1``. ``nn.MultiheadAttention`` keeps q, k and
v fused as ``in_proj_weight`` (q rows, then k, then v) -- the layout of our ``qkv`` -- so the tensors map as
they are. The head is ``cls_head.fc_cls``.
"""

from __future__ import annotations

from .common import rename

_L = "backbone.transformer_layers.layers.{i}"
DIVIDED = [  # (ours, mmaction2)
    ("blocks.{i}.temporal_norm1", f"{_L}.attentions.0.norm"),
    ("blocks.{i}.temporal_attn.qkv.weight", f"{_L}.attentions.0.attn.in_proj_weight"),
    ("blocks.{i}.temporal_attn.qkv.bias", f"{_L}.attentions.0.attn.in_proj_bias"),
    ("blocks.{i}.temporal_attn.proj", f"{_L}.attentions.0.attn.out_proj"),
    ("blocks.{i}.temporal_fc", f"{_L}.attentions.0.temporal_fc"),
    ("blocks.{i}.norm1", f"{_L}.attentions.1.norm"),
    ("blocks.{i}.attn.qkv.weight", f"{_L}.attentions.1.attn.in_proj_weight"),
    ("blocks.{i}.attn.qkv.bias", f"{_L}.attentions.1.attn.in_proj_bias"),
    ("blocks.{i}.attn.proj", f"{_L}.attentions.1.attn.out_proj"),
    ("blocks.{i}.norm2", f"{_L}.ffns.0.norm"),
]
SINGLE = [  # joint and space-only: mmcv BaseTransformerLayer(norm, self_attn, norm, ffn)
    ("blocks.{i}.norm1", f"{_L}.norms.0"),
    ("blocks.{i}.attn.qkv.weight", f"{_L}.attentions.0.attn.in_proj_weight"),
    ("blocks.{i}.attn.qkv.bias", f"{_L}.attentions.0.attn.in_proj_bias"),
    ("blocks.{i}.attn.proj", f"{_L}.attentions.0.attn.out_proj"),
    ("blocks.{i}.norm2", f"{_L}.norms.1"),
]
COMMON = [
    ("cls_token", "backbone.cls_token"),
    ("pos_embed", "backbone.pos_embed"),
    ("time_embed", "backbone.time_embed"),
    ("patch_embed.proj", "backbone.patch_embed.projection"),
    ("blocks.{i}.mlp.fc1", f"{_L}.ffns.0.layers.0.0"),
    ("blocks.{i}.mlp.fc2", f"{_L}.ffns.0.layers.1"),
    ("norm", "backbone.norm"),
    ("head", "cls_head.fc_cls"),
]


def is_mmaction(state: dict) -> bool:
    return any(k.startswith("backbone.transformer_layers.") for k in state)


def from_mmaction(state: dict) -> dict:
    divided = any(".attentions.1." in k for k in state)
    return rename(state, COMMON + (DIVIDED if divided else SINGLE), reverse=True)


def to_mmaction(state: dict) -> dict:
    divided = any(k.startswith("blocks.0.temporal_") for k in state)
    return rename(state, COMMON + (DIVIDED if divided else SINGLE))
