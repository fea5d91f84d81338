"""The TimeSformer model. Imports only torch, einops and itself."""

from .attention import Attention, attention
from .embeddings import resample_pos_embed, resample_time_embed
from .registry import PRESETS, create_model, get_config, list_models
from .timesformer import ATTENTIONS, POS_EMBS, TimeSformer, TimeSformerConfig

__all__ = [
    "ATTENTIONS",
    "POS_EMBS",
    "PRESETS",
    "Attention",
    "TimeSformer",
    "TimeSformerConfig",
    "attention",
    "create_model",
    "get_config",
    "list_models",
    "resample_pos_embed",
    "resample_time_embed",
]
