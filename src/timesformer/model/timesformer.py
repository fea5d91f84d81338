"""TimeSformer (Bertasius, Wang, Torresani, ICML 2021): config and model.

Legend: ``b t c H W`` pixels, ``h w`` patch grid, ``n = h*w``, ``d`` model dim, ``c`` cls copies.
Input is ``b t c H W`` float (the seed's and Hugging Face's layout); the official ``b c t H W`` is one
``video.transpose(1, 2)`` away and the weights are the same.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import IMPLS
from .blocks import Block, TokenContext
from .embeddings import PatchEmbed, resample_joint_pos_embed, resample_pos_embed, resample_time_embed, rotary_angles
from .partition import stages_for

ATTENTIONS = ("divided", "joint", "space", "sparse", "axial")
POS_EMBS = ("learned", "rotary", "learned_joint")


@dataclass(frozen=True)
class TimeSformerConfig:
    """Everything that defines a TimeSformer; stored with every checkpoint (``dataclasses.asdict``)."""

    num_classes: int = 400
    num_frames: int = 8  # frames the learned time table is built for; any T works at run time
    image_size: int = 224  # side the learned position table is built for; any H, W divisible by patch work
    patch_size: int = 16
    channels: int = 3
    dim: int = 768
    depth: int = 12
    heads: int = 12
    dim_head: int = 64
    mlp_ratio: float = 4.0
    attention: str = "divided"  # divided (T+S) | joint (ST) | space (S) | sparse (L+G) | axial (T+W+H)
    pos_emb: str = "learned"  # learned: official separate space + time tables | rotary: relative, no table |
    # learned_joint: the seed's one table over all 1 + T*N positions (for its rotary_emb=False models)
    # architecture details: defaults are the official model; the `lucidrains` preset flips them to the seed's
    mlp: str = "gelu"  # gelu | geglu
    qkv_bias: bool = True
    temporal_fc: bool = True  # official: a zero-initialised Linear after each pre-stage (temporal) attention
    cls_attention: str = "average"  # average: official, cls joins the last stage per group | global: the seed's
    shift_tokens: bool = False  # the seed's token shift along time (Token Shift Transformer)
    norm_eps: float = 1e-6
    # regularisation
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    # scheme and embedding parameters
    sparse_windows: int = 2  # L+G local step: H/2 x W/2 patch windows over all frames
    sparse_stride: int = 2  # L+G global step: stride 2 along T, H and W
    rotary_base: float = 10000.0
    time_embed_std: float = 0.0  # official: 0 (zeros). > 0 gives a from-scratch model a time signal at step 0
    zero_temporal_fc: bool = True  # official: temporal_fc starts at zero (a fresh model ignores time at first)
    attn_impl: str = "sdpa"  # sdpa (fused) | math (reference)
    # preprocessing that goes with the weights
    mean: tuple = (0.45, 0.45, 0.45)
    std: tuple = (0.225, 0.225, 0.225)
    labels: tuple | None = None  # class names, index -> name
    # how clips were sampled in training (official defaults: Kinetics, 8 frames every 32nd at 30 fps)
    sampling: str = "dense"  # dense: num_frames every sampling_rate frames | segment: one per segment (SSv2)
    sampling_rate: int = 32
    fps: float = 30.0

    def __post_init__(self):
        choices = dict(
            attention=ATTENTIONS,
            pos_emb=POS_EMBS,
            mlp=("gelu", "geglu"),
            cls_attention=("average", "global"),
            attn_impl=IMPLS,
            sampling=("dense", "segment"),
        )
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"TimeSformerConfig.{key} must be one of {allowed}; got {getattr(self, key)!r}")
        if not self.fps > 0:
            raise ValueError(f"TimeSformerConfig.fps must be positive; got {self.fps!r}")
        for key in (
            "num_classes",
            "num_frames",
            "image_size",
            "patch_size",
            "channels",
            "dim",
            "depth",
            "heads",
            "dim_head",
            "sampling_rate",
        ):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "num_classes" else 1):
                raise ValueError(f"TimeSformerConfig.{key} must be a positive int; got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be divisible by patch_size {self.patch_size}")
        if self.pos_emb == "rotary" and self.dim_head % 2:
            raise ValueError(f"rotary embeddings need an even dim_head; got {self.dim_head}")
        if self.labels is not None and len(self.labels) != self.num_classes:
            raise ValueError(f"labels has {len(self.labels)} names but num_classes is {self.num_classes}")
        for key in ("mean", "std"):
            if len(getattr(self, key)) != self.channels:
                raise ValueError(f"{key} needs {self.channels} values (one per channel); got {getattr(self, key)}")
        # lists (e.g. from JSON) become tuples so the config stays hashable
        for key in ("mean", "std", "labels"):
            if isinstance(getattr(self, key), list):
                object.__setattr__(self, key, tuple(getattr(self, key)))

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    def replace(self, **changes) -> TimeSformerConfig:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(
                f"unknown TimeSformerConfig field(s) {sorted(unknown)}; "
                f"known: {[f.name for f in dataclasses.fields(self)]}"
            )
        return dataclasses.replace(self, **changes)


class TimeSformer(nn.Module):
    """TimeSformer video classifier.

    ``video: b t c H W`` (float, normalised) and optional ``mask: b t`` bool (True = real frame)
    ``-> logits: b num_classes``. T, H and W are read from the input, never from the config.
    """

    def __init__(self, config: TimeSformerConfig):
        super().__init__()
        self.config = cfg = config
        self.patch_embed = PatchEmbed(channels=cfg.channels, dim=cfg.dim, patch_size=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        if cfg.pos_emb == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid**2 + 1, cfg.dim))
            if cfg.attention != "space":  # official: no time table for space-only
                self.time_embed = nn.Parameter(torch.zeros(1, cfg.num_frames, cfg.dim))
        elif cfg.pos_emb == "learned_joint":
            self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_frames * cfg.grid**2 + 1, cfg.dim))
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        rates = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()  # stochastic depth decay rule
        self.blocks = nn.ModuleList(
            [
                Block(
                    dim=cfg.dim,
                    heads=cfg.heads,
                    dim_head=cfg.dim_head,
                    attention=cfg.attention,
                    mlp_ratio=cfg.mlp_ratio,
                    mlp=cfg.mlp,
                    qkv_bias=cfg.qkv_bias,
                    temporal_fc=cfg.temporal_fc,
                    cls_attention=cfg.cls_attention,
                    shift=cfg.shift_tokens,
                    norm_eps=cfg.norm_eps,
                    drop=cfg.drop_rate,
                    attn_drop=cfg.attn_drop_rate,
                    drop_path=rate,
                    attn_impl=cfg.attn_impl,
                    sparse_windows=cfg.sparse_windows,
                    sparse_stride=cfg.sparse_stride,
                )
                for rate in rates
            ]
        )
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.num_classes) if cfg.num_classes else nn.Identity()
        self.grad_checkpointing = False
        # per-frame cls copies: the official space-only model runs frames as separate images
        self._cls_per_frame = cfg.attention == "space" and cfg.cls_attention == "average"
        self._rope_axes = sorted({part.axes for pre, final in [stages_for(cfg.attention)] for _, part in (*pre, final)})
        self.apply(self._init_weights)
        self._init_special()

    # --- init ----------------------------------------------------------------------------------------
    @staticmethod
    def _init_weights(m: nn.Module):
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _init_special(self):
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if hasattr(self, "pos_embed"):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if hasattr(self, "time_embed"):
            if self.config.time_embed_std > 0:
                nn.init.trunc_normal_(self.time_embed, std=self.config.time_embed_std)
            else:
                nn.init.zeros_(self.time_embed)
        # Official: temporal_fc starts at zero in every block (the init loop's `i > 0` test is used up by the
        # ModuleList itself), so a fresh divided model first computes what a space-only one does.
        for block in self.blocks:
            for name in block.pre_stages:
                fc = getattr(block, f"{name}_fc")
                if isinstance(fc, nn.Linear) and self.config.zero_temporal_fc:
                    nn.init.zeros_(fc.weight)
                    nn.init.zeros_(fc.bias)

    # --- API -----------------------------------------------------------------------------------------
    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed", "time_embed"}

    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    def reset_classifier(self, num_classes: int, labels: tuple | None = None):
        """New head for ``num_classes`` (e.g. fine-tuning); the config follows."""
        self.config = self.config.replace(num_classes=num_classes, labels=labels)
        self.head = nn.Linear(self.config.dim, num_classes) if num_classes else nn.Identity()
        if num_classes:
            self._init_weights(self.head)

    def check_input(self, video: torch.Tensor, mask: torch.Tensor | None = None):
        """Raise ``ValueError`` naming the expected and the actual shape for bad input."""
        cfg, p = self.config, self.config.patch_size
        if not isinstance(video, torch.Tensor) or video.ndim != 5:
            got = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
            raise ValueError(f"video must be a 5-D tensor b t c H W; got {got}")
        b, t, c, H, W = video.shape
        if c != cfg.channels:
            raise ValueError(f"video must be b t c H W with c = {cfg.channels} channels; got {tuple(video.shape)}")
        if H % p or W % p or H == 0 or W == 0:
            raise ValueError(f"video must be b t c H W with H, W divisible by patch size {p}; got {tuple(video.shape)}")
        if not video.is_floating_point():
            raise ValueError(f"video must be a float tensor (normalised pixels); got {video.dtype}")
        if mask is not None:
            if mask.shape != (b, t):
                raise ValueError(f"mask must be b t = {(b, t)} (one flag per frame); got {tuple(mask.shape)}")
            if mask.dtype != torch.bool:
                raise ValueError(f"mask must be bool (True = real frame); got {mask.dtype}")
            if not torch.compiler.is_compiling() and not bool(mask.any(1).all()):
                rows = (~mask.any(1)).nonzero().flatten().tolist()
                raise ValueError(f"mask has no real frame in row(s) {rows}; every clip needs at least one")

    def embed(self, video: torch.Tensor, mask: torch.Tensor | None = None):
        """Pixels to tokens: ``video: b t c H W -> (cls: b c d, x: b t h w d, ctx)``."""
        self.check_input(video, mask)
        cfg = self.config
        x = self.patch_embed(video)  # b t h w d
        b, t, h, w, d = x.shape
        cls = self.cls_token.expand(b, 1, d)
        rope = None
        if cfg.pos_emb == "learned":
            pos = resample_pos_embed(self.pos_embed, (h, w))  # 1 (1+n) d
            cls = cls + pos[:, :1]
            x = x + pos[:, 1:].reshape(1, 1, h, w, d)
            if hasattr(self, "time_embed"):
                x = x + resample_time_embed(self.time_embed, t).reshape(1, t, 1, 1, d)
        elif cfg.pos_emb == "learned_joint":
            pos = resample_joint_pos_embed(self.pos_embed, cfg.num_frames, (t, h, w))
            cls = cls + pos[:, :1]
            x = x + pos[:, 1:].reshape(1, t, h, w, d)
        else:
            rope = {}
            for axes in self._rope_axes:
                angles = rotary_angles(axes, (t, h, w), cfg.dim_head, base=cfg.rotary_base, device=x.device)
                # in the weights' dtype: a model cast to bf16 stays in bf16 (autocast keeps fp32 weights: fp32)
                dtype = self.cls_token.dtype
                cos, sin = angles.cos().unsqueeze(-2).to(dtype), angles.sin().unsqueeze(-2).to(dtype)
                rope[axes] = (cos, sin)  # t h w 1 (e/2)
        if mask is not None:  # padded frames carry no content: logits never depend on it
            x = torch.where(mask[:, :, None, None, None], x, 0.0)
        if self._cls_per_frame:
            cls = cls.expand(b, t, d)
        x, cls = self.pos_drop(x), self.pos_drop(cls)
        return cls, x, TokenContext(valid=mask, rope=rope)

    def forward_blocks(self, video: torch.Tensor, mask: torch.Tensor | None = None):
        """``video -> (cls: b c d, x: b t h w d)`` after the last block, before the final norm."""
        cls, x, ctx = self.embed(video, mask)
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                cls, x = checkpoint(block, cls, x, ctx, use_reentrant=False)
            else:
                cls, x = block(cls, x, ctx)
        return cls, x

    def pool_cls(self, cls: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``b c d -> b d``: per-frame cls copies (official space-only) are averaged over real frames before the
        final norm, as the official code averages the tokens over T."""
        if cls.shape[1] == 1:
            return cls[:, 0]
        if mask is None:
            return cls.mean(1)
        weight = mask.to(cls.dtype).unsqueeze(-1)
        return (cls * weight).sum(1) / weight.sum(1)

    def forward_features(self, video: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled, normed embedding: ``video: b t c H W -> b d`` (the input of the head)."""
        cls, _ = self.forward_blocks(video, mask)
        return self.norm(self.pool_cls(cls, mask))

    def forward_tokens(self, video: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """All normed tokens: ``video -> b (1 + t*n) d``, the pooled cls token first, then patches frame by
        frame (``t h w`` order)."""
        cls, x = self.forward_blocks(video, mask)
        tokens = torch.cat([self.pool_cls(cls, mask).unsqueeze(1), x.flatten(1, 3)], dim=1)
        return self.norm(tokens)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return features if pre_logits else self.head(features)

    def forward(self, video: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(video, mask))
