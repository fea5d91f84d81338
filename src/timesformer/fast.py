"""One switch for fast inference: ``optimize(model, precision="bf16", compile=True, example=clip)``.

- ``fp32``: the model as it is.
- ``bf16``: the weights cast to bfloat16 once (no per-op autocast casts); inputs follow, logits come back fp32.
- ``int8``: every ``nn.Linear`` (qkv, projections, MLPs, head: nearly all the FLOPs) quantized to int8 weights
  with activations quantized per batch at run time (dynamic quantization). It needs no calibration clips; the
  patch embedding, attention products and norms stay fp32.
- ``compile``: ``torch.compile`` (inductor, freezing the weights as constants) on top; where inductor fails --
  no C++ compiler, an unsupported op -- a warning says why and the module runs eagerly.

The result is an inference-only module with the model's ``forward(video, mask=None)``, ``forward_features``,
``forward_tokens`` and ``config``. It holds a copy: the model passed in is left unchanged, and later changes to
its weights don't reach the copy. "bf16" here means bf16 weights (norms and softmax in bf16 too), not the
autocast that training's ``optim.precision=bf16`` uses.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from .model import TimeSformer

PRECISIONS = ("fp32", "bf16", "int8")


class OptimizedTimeSformer(nn.Module):
    """``video: b t c H W`` (any float dtype), ``mask: b t`` bool or None -> fp32 logits ``b classes``."""

    def __init__(self, model: TimeSformer, precision: str, compile: bool):
        super().__init__()
        self.model, self.precision, self.config = model, precision, model.config
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.use_compile = compile
        self._entries = {}  # name -> callable (compiled, or eager after a failed compile)

    def _call(self, name: str, video: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        self.model.check_input(video, mask)  # bad input is the caller's error, never a "failed compile"
        eager = getattr(self.model, name)
        if name not in self._entries:
            # freezing: the weights become constants inductor can fold and pre-pack (inference only)
            self._entries[name] = torch.compile(eager, options={"freezing": True}) if self.use_compile else eager
        fn = self._entries[name]
        video = video.to(self.dtype)
        with torch.inference_mode():
            if fn == eager:  # bound methods: equal, not identical
                return eager(video, mask).float()
            try:  # a call with a new shape (re)compiles
                return fn(video, mask).float()
            except torch.OutOfMemoryError:
                raise  # not a compiler failure: eager would need the memory too
            except Exception as err:  # inductor fails in many ways; eager always works
                warnings.warn(f"torch.compile failed ({type(err).__name__}: {str(err).strip().splitlines()[0][:200]}"
                              f"); running {name} eagerly", RuntimeWarning, stacklevel=3)
                self._entries[name] = eager
                return eager(video, mask).float()

    def forward(self, video: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self._call("forward", video, mask)

    def forward_features(self, video: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled features ``b d`` (fp32)."""
        return self._call("forward_features", video, mask)

    def forward_tokens(self, video: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """All normed tokens ``b (1 + t*n) d`` (fp32)."""
        return self._call("forward_tokens", video, mask)

    @property
    def compiled(self) -> bool:
        """Whether ``forward`` runs compiled (False before its first call or after a failed compile)."""
        fn = self._entries.get("forward")
        return fn is not None and fn != self.model.forward


def optimize(model: TimeSformer, precision: str = "fp32", compile: bool = False,
             example: torch.Tensor | None = None, device: str | torch.device | None = None) -> OptimizedTimeSformer:
    """An inference copy of ``model`` in ``precision`` ("fp32", "bf16" or "int8"), compiled when ``compile``.

    Args:
        example: a clip ``b t c H W`` to run once now, so compiling (and any fallback to eager) happens here
            rather than on the first real call.
        device: where the copy runs (default: where ``model`` is); the model itself never moves.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if precision == "int8" and device.type != "cpu":  # dynamic quantization has CPU kernels only
        raise ValueError(f"precision='int8' runs on the cpu; got device {device} (use bf16 on the GPU)")
    fast = copy.deepcopy(model).eval().requires_grad_(False).to(device)
    if precision == "bf16":
        fast = fast.to(torch.bfloat16)
    elif precision == "int8":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notice that eager quantization moves to torchao
            fast = torch.ao.quantization.quantize_dynamic(fast, {nn.Linear}, dtype=torch.qint8)
    out = OptimizedTimeSformer(fast, precision, compile)
    if example is not None:
        out(example)
    return out
