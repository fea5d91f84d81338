"""timesformer: TimeSformer ("Is Space-Time Attention All You Need for Video Understanding?", ICML 2021)."""

from .model import ATTENTIONS, POS_EMBS, TimeSformerConfig, get_config, list_models

__version__ = "0.1.0"

# create_model here also takes pretrained= (timm's style); timesformer.model.create_model builds presets only
from .fast import optimize
from .hub import TimeSformer, create_model, load_pretrained
from .pretrained import export_hf, init_from_image_vit, save_pretrained

__all__ = ["ATTENTIONS", "POS_EMBS", "TimeSformer", "TimeSformerConfig", "create_model", "get_config", "list_models"]
__all__ += ["export_hf", "init_from_image_vit", "load_pretrained", "optimize", "save_pretrained"]
