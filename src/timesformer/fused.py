"""The speed layer: exact rewrites of the reference model's hot spots, applied on purpose and only where safe.

The reference model (``timesformer.model``) runs every linear map as a module, so hooks, adapters (LoRA), fake
quantization and pruning see what really runs. This module swaps in faster equivalents that keep the same
parameters (and so the same state-dict keys, optimizer state and checkpoints):

* ``FusedMlp``: ``fc2(gelu(a))`` as one autograd function that keeps only ``a`` for the backward pass and
  recomputes the GELU there (autograd would keep both ``a`` and ``gelu(a)``, the two largest activations of a
  block) once ``a`` is over ``KEEP_GELU_BYTES``; smaller ones are kept. Training memory and time.
* the ``temporal_fc`` fold: ``fc(drop_path(proj(o)))`` of a pre-stage (temporal attention, for divided) as
  ``drop_path(o W^T + c) + b_fc`` with ``W = W_fc W_proj``, ``c = W_fc b_proj``: one d x d matmul per token fewer
  for one d x d x d per block (``FoldedProj`` in ``attn.proj``, ``StageBias`` in ``{name}_fc``).
* ``cpu_attention``: on CPU inference with short key sequences, two batched matmuls around a softmax, where
  ``benchmarks/bench_attention.py`` measures them faster than PyTorch's fused SDPA kernel.

``fuse(model)`` applies them to the modules where they are exact and safe: plain ``nn.Linear`` modules with no
hooks or parametrizations (a LoRA or QAT wrapper is not an ``nn.Linear``; ``nn.qat.Linear`` is a subclass, and
refused too), and never to a module that carries hooks itself. It logs one line saying what it fused and what
it left on the reference path (a warning when it left any). A hook added later sends that module back to the
reference computation at run time (one warning); so does, silently, dropout that sits between the fused maps
in training. ``unfuse(model)`` puts the reference modules back, with any hooks the fused ones carried; do that
before wrapping a model for QAT or LoRA (``fit`` returns its model unfused).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .model import TimeSformer
from .model.attention import Attention, attention
from .model.blocks import Block
from .model.layers import Mlp

log = logging.getLogger(__name__)


# --- safety --------------------------------------------------------------------------------------------------
def _has_hooks(module: nn.Module) -> bool:
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or getattr(module, "_backward_pre_hooks", None)
        or nn.modules.module._global_forward_hooks
        or nn.modules.module._global_forward_pre_hooks
        or nn.modules.module._global_backward_hooks
        or getattr(nn.modules.module, "_global_backward_pre_hooks", None)
    )


def is_plain_linear(module: nn.Module) -> bool:
    """An ``nn.Linear`` itself (no subclass such as ``nn.qat.Linear``), with no hooks or parametrizations: a module
    whose ``forward`` is exactly ``F.linear(x, weight, bias)``, so a rewrite may read its weights directly."""
    return type(module) is nn.Linear and not _has_hooks(module) and not parametrize.is_parametrized(module)


_warned: set[str] = set()

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


def _carry_hooks(source: nn.Module, target: nn.Module) -> nn.Module:
    """``target`` takes ``source``'s hook dicts themselves (not copies), so existing handles still remove them."""
    for name in _HOOK_DICTS:
        if hasattr(source, name):
            setattr(target, name, getattr(source, name))
    return target


def _fallback(what: str):
    """One warning per kind of fallback and process: a fused module that runs its reference computation."""
    if what not in _warned:
        _warned.add(what)
        warnings.warn(f"timesformer.fused: {what}; that module runs the reference path", RuntimeWarning, stacklevel=3)


# --- fused GELU + linear -------------------------------------------------------------------------------------
def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype in force for ``device_type``, or None."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device argument
        enabled = torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
    if not enabled:
        return None
    try:
        return torch.get_autocast_dtype(device_type)
    except AttributeError:  # torch < 2.4
        return torch.get_autocast_cpu_dtype() if device_type == "cpu" else torch.get_autocast_gpu_dtype()


KEEP_GELU_BYTES = 32 * 2**20  # GELU outputs up to this size are kept for the backward pass, larger ones recomputed


class GeluLinear(torch.autograd.Function):
    """``linear(gelu(a), weight, bias)`` that keeps only ``a`` for the backward pass and recomputes the GELU there,
    where ``a`` is over ``KEEP_GELU_BYTES`` (autograd would keep both). Honours autocast like ``F.linear``."""

    @staticmethod
    def forward(ctx, a, weight, bias):
        dtype = _autocast_dtype(a.device.type)
        ctx.dtypes = (a.dtype, weight.dtype, bias.dtype)
        if dtype is not None:
            a, weight, bias = a.to(dtype), weight.to(dtype), bias.to(dtype)
        with torch.autocast(a.device.type, enabled=False):
            hidden = F.gelu(a)
            out = F.linear(hidden, weight, bias)
        # a small activation is kept rather than recomputed: the memory is nothing, the GELU is 2 % of a step
        keep = a.numel() * a.element_size() <= KEEP_GELU_BYTES
        ctx.save_for_backward(a, weight, *([hidden] if keep else []))
        return out

    @staticmethod
    def backward(ctx, grad_out):
        a, weight, *kept = ctx.saved_tensors
        grad_out = grad_out.to(a.dtype)
        hidden = kept[0] if kept else F.gelu(a)  # the same values either way
        grad_a = torch.ops.aten.gelu_backward(grad_out @ weight, a)
        flat_grad, flat_hidden = grad_out.reshape(-1, grad_out.shape[-1]), hidden.reshape(-1, hidden.shape[-1])
        grad_w = flat_grad.t() @ flat_hidden
        grad_b = flat_grad.sum(0)
        a_dt, w_dt, b_dt = ctx.dtypes
        return grad_a.to(a_dt), grad_w.to(w_dt), grad_b.to(b_dt)


class FusedMlp(Mlp):
    """``Mlp`` (GELU kind) whose ``gelu -> fc2`` runs as :class:`GeluLinear` when gradients are recorded. Holds the
    same ``fc1``, ``fc2`` and ``drop`` modules."""

    @classmethod
    def adopt(cls, mlp: Mlp) -> FusedMlp:
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        fused.kind, fused.fc1, fused.fc2, fused.drop = mlp.kind, mlp.fc1, mlp.fc2, mlp.drop
        return fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() or self.kind != "gelu":  # without a backward pass the reference is as fast
            return super().forward(x)
        if self.training and self.drop.p > 0:  # dropout sits between GELU and fc2
            return super().forward(x)
        if not is_plain_linear(self.fc2):
            _fallback(f"mlp.fc2 is {type(self.fc2).__name__} with hooks or a wrapper")
            return super().forward(x)
        return self.drop(GeluLinear.apply(self.fc1(x), self.fc2.weight, self.fc2.bias))

    def reference(self) -> Mlp:
        mlp = Mlp.__new__(Mlp)
        nn.Module.__init__(mlp)
        mlp.kind, mlp.fc1, mlp.fc2, mlp.drop = self.kind, self.fc1, self.fc2, self.drop
        return _carry_hooks(self, mlp)


# --- the temporal_fc fold --------------------------------------------------------------------------------------
class StageBias(nn.Module):
    """A pre-stage's ``fc`` (``{name}_fc``) whose matrix :class:`FoldedProj` applies: adds ``b_fc`` only. Holds the
    ``fc``'s own ``weight`` and ``bias`` parameters, so the state dict keeps its keys."""

    def __init__(self, fc: nn.Linear):
        super().__init__()
        self.weight, self.bias = fc.weight, fc.bias
        self.in_features, self.out_features = fc.in_features, fc.out_features
        object.__setattr__(self, "folded", None)  # the FoldedProj applying W_fc: a reference, not a submodule

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.folded is not None and self.folded.active():
            return y + self.bias
        return F.linear(y, self.weight, self.bias)

    def reference(self) -> nn.Linear:
        fc = nn.Linear(self.in_features, self.out_features, device=self.weight.device, dtype=self.weight.dtype)
        fc.weight, fc.bias = self.weight, self.bias
        return _carry_hooks(self, fc)


class FoldedProj(nn.Module):
    """An attention's ``proj`` with the stage's ``fc`` matrix folded in: ``o -> W_fc (W_proj o + b_proj)``; the
    stage's :class:`StageBias` adds ``b_fc`` after stochastic depth, so ``fc(m * proj(o))`` comes out exactly.
    Holds ``proj``'s ``weight`` and ``bias`` parameters (same keys)."""

    def __init__(self, proj: nn.Linear, fc: StageBias, proj_drop: nn.Dropout):
        super().__init__()
        self.weight, self.bias = proj.weight, proj.bias
        self.in_features, self.out_features = proj.in_features, proj.out_features
        # plain references, not submodules: their parameters belong where they are
        object.__setattr__(self, "stage_fc", fc)
        object.__setattr__(self, "proj_drop", proj_drop)
        object.__setattr__(fc, "folded", self)

    def active(self) -> bool:
        """Whether the fold is exact and safe now: no output dropout between the maps, no hooks on either module."""
        if self.training and self.proj_drop.p > 0:
            return False
        if _has_hooks(self) or _has_hooks(self.stage_fc):
            _fallback("a hook sits on a folded proj or temporal_fc")
            return False
        return True

    def forward(self, o: torch.Tensor) -> torch.Tensor:
        if not self.active():
            return F.linear(o, self.weight, self.bias)
        fc_weight = self.stage_fc.weight
        return F.linear(o, fc_weight @ self.weight, fc_weight @ self.bias)

    def reference(self) -> nn.Linear:
        proj = nn.Linear(self.in_features, self.out_features, device=self.weight.device, dtype=self.weight.dtype)
        proj.weight, proj.bias = self.weight, self.bias
        return _carry_hooks(self, proj)


@torch.no_grad()
def fold_stage_fc(model: TimeSformer) -> TimeSformer:
    """For inference copies: fold each pre-stage's ``fc`` into its attention's ``proj`` for good -- ``proj`` becomes
    ``x -> W_fc (W_proj x + b_proj) + b_fc`` and ``fc`` an identity. Exact, and it leaves every linear map a plain
    ``nn.Linear`` of constant weights (what quantizers and compilers look for). Changes the state dict's keys:
    never for checkpoints. Only where both maps are plain ``nn.Linear`` modules without hooks."""
    for block in model.blocks:
        for name in block.pre_stages:
            fc, proj = getattr(block, f"{name}_fc"), getattr(block, f"{name}_attn").proj
            if is_plain_linear(fc) and is_plain_linear(proj):
                proj.bias.copy_(fc.weight @ proj.bias + fc.bias)
                proj.weight.copy_(fc.weight @ proj.weight)
                setattr(block, f"{name}_fc", nn.Identity())
    return model


# --- attention kernel ------------------------------------------------------------------------------------------
def cpu_attention(q, k, v, *, mask=None, dropout_p: float = 0.0, impl: str = "sdpa") -> torch.Tensor:
    """:func:`timesformer.model.attention.attention`, with matmul-softmax-matmul where it beats the fused CPU
    kernel: CPU, fp32, no gradient recorded, and at most 32 keys (temporal attention) -- see
    ``benchmarks/bench_attention.py``. Dropout is honoured on both paths."""
    if impl != "sdpa" or not _matmul_is_faster(q, k):
        return attention(q, k, v, mask=mask, dropout_p=dropout_p, impl=impl)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # B k L S
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1).to(v.dtype)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return probs @ v


def _matmul_is_faster(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Measured (bench_attention.py, 2-core AMD EPYC, AVX2, torch 2.13; benchmarks/results/attention-2026-12-04-*),
    SDPA / matmul time in fp32 inference: 8 keys 3.88x, 14-16 keys 2.1-2.4x, 32 keys 1.38x, 197 keys 0.87x. In
    training SDPA keeps no attention matrix (matmul 0.82-1.09x there), and in bf16 matmul lost everywhere on this
    CPU without native bf16 (0.02-0.40x). (An earlier, unrecorded run on an AVX-512-BF16 CPU had bf16 matmul ahead
    up to 512 keys: bf16 stays on SDPA until the benchmark's own table shows that.)"""
    if q.device.type != "cpu" or q.dtype != torch.float32:
        return False
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        return False  # in training the fused kernel also saves memory: it keeps no attention matrix
    return k.shape[-2] <= 32


# --- apply / remove ---------------------------------------------------------------------------------------------
@dataclass
class FuseReport:
    """What :func:`fuse` did: module names fused per rewrite, and those left on the reference path, with why."""

    mlp: list[str] = field(default_factory=list)
    fold: list[str] = field(default_factory=list)
    kernel: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        text = (
            f"fused layer: {len(self.mlp)} MLPs, {len(self.fold)} temporal_fc folds, "
            f"{len(self.kernel)} CPU attention kernels"
        )
        if self.skipped:
            first = next(iter(self.skipped.items()))
            text += f"; {len(self.skipped)} module(s) left on the reference path ({first[0]}: {first[1]}"
            text += ", ...)" if len(self.skipped) > 1 else ")"
        return text


def _why_not(module: nn.Module) -> str:
    if type(module) is not nn.Linear:
        return f"{type(module).__module__}.{type(module).__qualname__}, not a plain nn.Linear"
    return "has hooks or parametrizations"


def fuse(model: nn.Module, *, mlp: bool = True, fold: bool = True, kernel: bool = True, quiet: bool = False):
    """Apply the speed layer to ``model`` (a ``TimeSformer``, or any module holding its blocks) in place.

    Returns a :class:`FuseReport`; unless ``quiet``, logs its one line.
    """
    report = FuseReport()
    for name, module in list(model.named_modules()):
        if not isinstance(module, Block):
            continue
        if mlp and type(module.mlp) is Mlp and module.mlp.kind == "gelu":
            if _has_hooks(module.mlp):
                report.skipped[f"{name}.mlp"] = "has hooks"
            elif is_plain_linear(module.mlp.fc2):
                module.mlp = FusedMlp.adopt(module.mlp)
                report.mlp.append(f"{name}.mlp")
            else:
                report.skipped[f"{name}.mlp.fc2"] = _why_not(module.mlp.fc2)
        for stage in module.pre_stages if fold else ():
            fc, attn = getattr(module, f"{stage}_fc"), getattr(module, f"{stage}_attn")
            if isinstance(fc, nn.Identity) or isinstance(attn.proj, FoldedProj):
                continue
            if is_plain_linear(fc) and is_plain_linear(attn.proj) and not _has_hooks(attn):
                bias = StageBias(fc)
                setattr(module, f"{stage}_fc", bias)
                attn.proj = FoldedProj(attn.proj, bias, attn.proj_drop)
                report.fold.append(f"{name}.{stage}_fc")
            else:
                for where, part in ((f"{stage}_fc", fc), (f"{stage}_attn.proj", attn.proj), (f"{stage}_attn", attn)):
                    if (part is attn and _has_hooks(attn)) or (part is not attn and not is_plain_linear(part)):
                        report.skipped[f"{name}.{where}"] = "has hooks" if part is attn else _why_not(part)
                        break
    for name, module in model.named_modules() if kernel else ():
        if isinstance(module, Attention) and module.kernel is attention:
            module.kernel = cpu_attention
            report.kernel.append(name)
    if not quiet:
        (log.warning if report.skipped else log.info)(report.line())
    return report


def unfuse(model: nn.Module) -> nn.Module:
    """Put the reference modules back (same parameters): the model computes exactly what ``fuse`` computed, as modules
    that hooks and wrappers can see."""
    for _, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, (FusedMlp, FoldedProj, StageBias)):
                setattr(module, child_name, child.reference())
        if isinstance(module, Attention) and module.kernel is cpu_attention:
            module.kernel = attention
    return model
