"""Hugging Face ``transformers`` Timesformer <-> ours. Pure ``state_dict -> state_dict`` renames: HF keeps the
official fused qkv, so no tensor changes."""

from __future__ import annotations

from .common import rename

_L = "timesformer.encoder.layer.{i}"
HF_KEYS: list[tuple[str, str]] = [  # (ours, HF)
    ("cls_token", "timesformer.embeddings.cls_token"),
    ("pos_embed", "timesformer.embeddings.position_embeddings"),
    ("time_embed", "timesformer.embeddings.time_embeddings"),
    ("patch_embed.proj", "timesformer.embeddings.patch_embeddings.projection"),
    ("blocks.{i}.norm1", f"{_L}.layernorm_before"),
    ("blocks.{i}.attn.qkv", f"{_L}.attention.attention.qkv"),
    ("blocks.{i}.attn.proj", f"{_L}.attention.output.dense"),
    ("blocks.{i}.temporal_norm1", f"{_L}.temporal_layernorm"),
    ("blocks.{i}.temporal_attn.qkv", f"{_L}.temporal_attention.attention.qkv"),
    ("blocks.{i}.temporal_attn.proj", f"{_L}.temporal_attention.output.dense"),
    ("blocks.{i}.temporal_fc", f"{_L}.temporal_dense"),
    ("blocks.{i}.norm2", f"{_L}.layernorm_after"),
    ("blocks.{i}.mlp.fc1", f"{_L}.intermediate.dense"),
    ("blocks.{i}.mlp.fc2", f"{_L}.output.dense"),
    ("norm", "timesformer.layernorm"),
    ("head", "classifier"),
]

HF_ATTENTION = {"divided_space_time": "divided", "space_only": "space", "joint_space_time": "joint"}


def from_hf(state: dict) -> dict:
    """HF ``TimesformerForVideoClassification`` (or bare ``TimesformerModel``) keys -> ours."""
    if not any(k.startswith("timesformer.") for k in state):  # a bare TimesformerModel
        state = {f"timesformer.{k}": v for k, v in state.items()}
    return rename(state, HF_KEYS, reverse=True)


def to_hf(state: dict) -> dict:
    return rename(state, HF_KEYS)
