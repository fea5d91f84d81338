"""One switch for fast inference: ``optimize(model, precision="bf16", compile=True, example=clip)``.

- ``fp32``: the model as it is.
- ``bf16``: the weights cast to bfloat16 once (no per-op autocast casts); inputs follow, logits come back fp32.
- ``fp16``: the same in float16 (GPUs; on a CPU it runs, slowly).
- ``int8``: every linear map (qkv, projections, MLPs, head: nearly all the FLOPs) runs on int8 weights and
  activations. Two methods, by what is available:

  * static (``compile=True`` and ``torchao`` installed, CPU): PT2E quantization with torchao's x86 inductor
    quantizer -- the model is exported, its activations' ranges are observed on calibration clips, and inductor
    lowers each linear to a oneDNN int8 kernel (AMX / VNNI), with the work between them in bf16 (fp32 on CPUs
    without oneDNN bf16 kernels: AVX2). On CPUs without VNNI the activations take 7 bits (0-127): their kernels add
    pairs of products in 16-bit registers, which saturate at full range. The fastest path on CPUs with int8
    matmul units; it needs calibration clips (``calibration``, else the first input).
  * dynamic (otherwise): ``torch.ao`` dynamic quantization of every ``nn.Linear``, activations quantized per
    batch at run time; no calibration, runs eagerly.

- ``compile``: ``torch.compile`` (inductor, freezing the weights as constants) on top; where inductor fails --
  no C++ compiler, an unsupported op -- a warning says why and the module runs eagerly (int8: dynamic). On CUDA
  it also captures CUDA graphs (``mode="reduce-overhead"``), one per input shape: a call replays its kernels in
  one launch, which is what small batches are bound by. Each call's logits are its own (copied out of the graph's
  memory).

The result is an inference-only module with the model's ``forward(video, mask=None)``, ``forward_features``,
``forward_tokens`` and ``config``. It holds a copy: the model passed in is left unchanged, and later changes to
its weights don't reach the copy. "bf16" here means bf16 weights (norms and softmax in bf16 too), not the
autocast that training's ``optim.precision=bf16`` uses.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from collections.abc import Iterable

import torch
from torch import nn

from .errors import UserError
from .fused import fold_stage_fc, fuse, unfuse
from .model import TimeSformer

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # /proc/cpuinfo: int8 dot products without 16-bit saturation


def torchao_pt2e():
    """torchao's PT2E quantization entry points ``(prepare, convert, to_eval, x86 quantizer module)``, or None
    when torchao is not installed (``pip install 'timesformer[fast]'``)."""
    quiet = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in quiet]
    try:
        for log in quiet:  # its import reports GPU kernels it can't load on a CPU build: noise here
            log.setLevel(logging.ERROR)
        from torchao.quantization.pt2e import move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer
    except ImportError:
        return None
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)
    return prepare_pt2e, convert_pt2e, move_exported_model_to_eval, x86_inductor_quantizer


class _Method(nn.Module):
    """One of the model's entry points as a module's ``forward``, with or without a mask (what export takes)."""

    def __init__(self, model: TimeSformer, name: str, masked: bool):
        super().__init__()
        self.model, self.name, self.masked = model, name, masked

    def forward(self, video, mask=None):
        return getattr(self.model, self.name)(video, mask if self.masked else None)


def _untie_linear_weights(graph: torch.fx.Graph):
    """Give every linear call its own weight node. The cls token goes through the same ``nn.Linear`` as the patch
    tokens in a separate call; a weight with two users gets one dequantize node with two users, and inductor's
    int8 linear pattern then leaves both calls as fp32 matmuls of dequantized weights (measured: 90 of 117, torch
    2.13, torchao 0.18)."""
    for node in list(graph.nodes):
        if node.op != "get_attr":
            continue
        for user in [u for u in node.users if u.target == torch.ops.aten.linear.default][1:]:
            with graph.inserting_before(user):
                twin = graph.get_attr(node.target)
            twin.meta = dict(node.meta)
            user.replace_input_with(node, twin)


# ops whose output may share its input's buffer (dropout: an identity in eval)
_VIEWS = {
    torch.ops.aten.expand.default,
    torch.ops.aten.view.default,
    torch.ops.aten.reshape.default,
    torch.ops.aten.unsqueeze.default,
    torch.ops.aten.slice.Tensor,
    torch.ops.aten.select.int,
    torch.ops.aten.contiguous.default,
    torch.ops.aten.alias.default,
    torch.ops.aten.dropout.default,
}


def _unfold_constants_added_to_linears(graph: torch.fx.Graph):
    """Inductor fuses ``y + linear(x)`` into one int8 kernel that accumulates into ``y``'s buffer in place. Where ``y``
    is a view of weights -- the seed's cls token, ``cls_token.expand(b, 1, d)``, added to its first projection --
    freezing has folded ``y`` into a constant, so each call added into the next call's cls token (measured: top-1
    agreement with fp32 100 % on the first batch, 86 % after). ``y + 0 * linear(x)`` is a value of this call
    (no fold can remove ``0 *``: it keeps NaNs), and the kernel accumulates into a buffer of its own. Seen with
    torch 2.13 and torchao 0.18; the test of repeated calls guards it."""

    def root(node):
        while isinstance(node, torch.fx.Node) and node.target in _VIEWS:
            node = node.args[0]
        return node

    for node in list(graph.nodes):
        if node.target != torch.ops.aten.add.Tensor or len(node.args) != 2:
            continue
        a, b = node.args
        for const, other in ((a, b), (b, a)):
            if not (isinstance(const, torch.fx.Node) and isinstance(other, torch.fx.Node)):
                continue
            const_root, other_root = root(const), root(other)
            if getattr(const_root, "op", None) == "get_attr" and other_root.target == torch.ops.aten.linear.default:
                with graph.inserting_before(node):
                    zero = graph.call_function(torch.ops.aten.mul.Tensor, (other, 0.0))
                    fresh = graph.call_function(torch.ops.aten.add.Tensor, (const, zero))
                zero.meta, fresh.meta = dict(other.meta), dict(node.meta)
                node.replace_input_with(const, fresh)
                break


def _drop_dtype_asserts(graph: torch.fx.Graph):
    """Export records each ``.to(dtype)`` as a dtype assertion; the int8 graph may run its float work in bf16."""
    for node in list(graph.nodes):
        if node.target == torch.ops.aten._assert_tensor_metadata.default:
            graph.erase_node(node)


def cpu_has_vnni(cpuinfo: str | os.PathLike | None = None) -> bool:
    """Whether this CPU multiplies int8 without saturating 16-bit sums: one of ``VNNI_FLAGS``, as torch's CPU
    capabilities report them (any OS), else as a ``/proc/cpuinfo``-style file lists them (``cpuinfo``: that file,
    read instead). True where neither can be read: the choice made before anyone checked."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)  # torch >= 2.8
    if cpuinfo is None and capabilities is not None:
        found = capabilities()
        return any(found.get(flag, False) for flag in VNNI_FLAGS)
    try:
        with open(cpuinfo or "/proc/cpuinfo") as f:
            flags = next((line.partition(":")[2].split() for line in f if line.startswith("flags")), None)
    except (OSError, UnicodeDecodeError):
        return True
    return flags is None or any(flag in flags for flag in VNNI_FLAGS)


def int8_static_float_dtype() -> torch.dtype:
    """The float work between static int8's linears: bf16 where oneDNN reports bf16 support (AVX-512 core, or AVX2
    with VNNI-2: its int8-mixed-bf16 kernels), else fp32. On an AVX2-only CPU, oneDNN's bf16 fallback had not
    finished one linear of a dim-96 model after 4 min (``benchmarks/results/int8-static-avx2-2026-12-05.md``)."""
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)  # absent from builds without oneDNN
    return torch.bfloat16 if supported is not None and supported() else torch.float32


def quantize_static(
    model: TimeSformer,
    name: str,
    video: torch.Tensor,
    mask: torch.Tensor | None,
    calibration: Iterable[torch.Tensor],
    reduce_range: bool,
) -> torch.fx.GraphModule:
    """The PT2E int8 graph of ``model.<name>`` for inputs shaped like ``video`` (any batch size).

    ``calibration``: clips ``n t c H W`` shaped like ``video`` past the batch; each is run through the observed
    graph (with an all-real mask when ``mask`` is given). ``reduce_range``: activations in 7 bits (0-127), for CPUs
    without VNNI, whose int8 kernels add pairs of products in 16-bit registers that saturate at full range. Run
    the result compiled (inductor), under bf16 autocast where ``int8_static_float_dtype`` is bf16.
    """
    prepare, convert, to_eval, x86 = torchao_pt2e()
    method = _Method(model, name, mask is not None)
    # traced at batch 2: export fixes a dimension of size 1 to a constant
    args = tuple(a[:1].expand(2, *a.shape[1:]) for a in ((video,) if mask is None else (video, mask)))
    batch = torch.export.Dim("batch", min=1)
    dynamic = ({0: batch},) * len(args)
    with torch.no_grad():
        # strict: torchao's quantizer finds the linear layers by the source of each node, which strict export keeps
        gm = torch.export.export(method, args, dynamic_shapes=dynamic, strict=True).module()
        _untie_linear_weights(gm.graph)
        _unfold_constants_added_to_linears(gm.graph)
        _drop_dtype_asserts(gm.graph)
        gm.recompile()
        # the linears only: nearly all the FLOPs, and inductor can't prepack the patch conv for a free batch size
        quantizer = x86.X86InductorQuantizer().set_module_type_qconfig(
            nn.Linear, x86.get_default_x86_inductor_quantization_config(reduce_range=reduce_range)
        )
        observed = prepare(gm, quantizer)
        for clips in calibration:
            clips = clips.to(video.dtype)
            observed(clips) if mask is None else observed(clips, torch.ones(clips.shape[:2], dtype=torch.bool))
        graph = convert(observed)
        to_eval(graph)
    return graph


class OptimizedTimeSformer(nn.Module):
    """``video: b t c H W`` (any float dtype), ``mask: b t`` bool or None -> fp32 logits ``b classes``."""

    def __init__(
        self,
        model: TimeSformer,
        precision: str,
        compile: bool,
        method: str,
        calibration: list[torch.Tensor] | None = None,
    ):
        super().__init__()
        self.model, self.precision, self.config, self.method = model, precision, model.config, method
        self.dtype = HALF.get(precision, torch.float32)
        # int8-static: the float work between the int8 linears in bf16 where oneDNN has bf16 kernels
        self.bf16_between = method == "int8-static" and int8_static_float_dtype() == torch.bfloat16
        # int8-static: 7-bit activations where the CPU lacks VNNI (full range saturates its 16-bit sums)
        self.reduce_range = method == "int8-static" and not cpu_has_vnni()
        self.graphs = compile and method != "int8-static" and next(model.parameters()).is_cuda  # CUDA graphs
        self.use_compile = compile
        self._calibration = calibration
        self._dynamic = None  # int8-static's fallback: the dynamically quantized copy, made when first needed
        self._entries = {}  # key -> callable (compiled, or eager after a failed compile)
        self._compiled = set()  # keys whose callable is compiled
        self._ran = set()  # keys whose compiled callable has run: a later exception there is no compile failure

    def calibrate(self, clips: torch.Tensor | Iterable[torch.Tensor]):
        """Clips ``b t c H W`` (a tensor or a list of batches) whose activation ranges set the int8 scales of every
        graph built from now on (int8-static; the others need none). Graphs already built keep their scales:
        calibrate before the first call (or pass ``calibration`` to :func:`optimize`)."""
        if self.method == "int8-static" and self._compiled:
            warnings.warn(
                "calibrate() after int8 graphs were built: only graphs for new input shapes use these clips",
                RuntimeWarning,
                stacklevel=2,
            )
        self._calibration = _clips(clips)

    def _key(self, name: str, video: torch.Tensor, mask: torch.Tensor | None):
        # a static int8 graph is exported for one input signature; the batch size stays free
        return (name, mask is not None, tuple(video.shape[1:])) if self.method == "int8-static" else name

    def _eager(self, name: str):
        if self.method == "int8-static":  # the exported graph runs quantization by reference when not compiled
            if self._dynamic is None:
                self._dynamic = _quantize_dynamic(self.model)
            return getattr(self._dynamic, name)
        return getattr(self.model, name)

    def _build(self, key, name: str, video: torch.Tensor, mask: torch.Tensor | None):
        if not self.use_compile:
            return self._eager(name)
        if self.method != "int8-static":
            fn = torch.compile(self._eager(name), mode="reduce-overhead" if self.graphs else None)
        else:
            calibration = [c for c in self._calibration or () if c.shape[1:] == video.shape[1:]]
            if not calibration:
                shapes = sorted({tuple(c.shape[1:]) for c in self._calibration or ()})
                warnings.warn(
                    f"int8 static: no calibration clips shaped like this input ({tuple(video.shape[1:])}"
                    + (f"; they are {shapes}" if shapes else "")
                    + f"), so its {len(video)} clip(s) set the "
                    f"int8 scales; pass a few clips of the data to optimize(calibration=...) or "
                    f".calibrate()",
                    RuntimeWarning,
                    stacklevel=4,
                )
                calibration = [video]
            try:
                graph = quantize_static(self.model, name, video, mask, calibration, self.reduce_range)
            except Exception as err:  # export or quantization failed: the eager int8 path always works
                self._warn(name, "int8 static quantization", err)
                return self._eager(name)
            fn = torch.compile(graph)
        self._compiled.add(key)
        return fn

    def _warn(self, name: str, what: str, err: Exception):
        warnings.warn(
            f"{what} failed ({type(err).__name__}: {str(err).strip().splitlines()[0][:200]}); running "
            f"{name} eagerly" + (" with dynamic int8" if self.method == "int8-static" else ""),
            RuntimeWarning,
            stacklevel=4,
        )

    def _call(self, name: str, video: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        self.model.check_input(video, mask)  # bad input is the caller's error, never a "failed compile"
        key = self._key(name, video, mask)
        video = video.to(self.dtype)
        if key not in self._entries:
            self._entries[key] = self._build(key, name, video, mask)
        fn = self._entries[key]
        # an exported int8 graph takes the mask only where it was exported with one
        args = (video,) if mask is None and self.method == "int8-static" else (video, mask)
        with torch.no_grad():
            if key not in self._compiled:
                return fn(video, mask).float()
            autocast = torch.autocast("cpu", torch.bfloat16) if self.bf16_between else contextlib.nullcontext()
            try:  # a call with a new shape (re)compiles; freezing: the weights become constants inductor folds and
                # pre-packs (the global setting: compile's options={"freezing": True} skips the int8 lowering)
                with autocast, torch._inductor.config.patch(freezing=True), warnings.catch_warnings():
                    warnings.filterwarnings("ignore", "To copy construct from a tensor")  # inside inductor's int8
                    if self.graphs:  # a new replay: the last one's outputs were copied out, its memory is free
                        torch.compiler.cudagraph_mark_step_begin()
                    out = fn(*args)
                    out = out.clone() if self.graphs and out.dtype == torch.float32 else out.float()
                self._ran.add(key)
                return out
            except torch.OutOfMemoryError:
                raise  # not a compiler failure: eager would need the memory too
            except Exception as err:  # inductor fails in many ways; eager always works
                if key in self._ran:  # only the first call's compile may fail over to eager; later: a real error
                    raise
                self._warn(name, "torch.compile", err)
                self._entries[key] = self._eager(name)
                self._compiled.discard(key)
                return self._entries[key](video, mask).float()

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
        """Whether ``forward`` has run compiled (False before its first call or after a failed compile)."""
        return any(key == "forward" or key[0] == "forward" for key in self._compiled)


def _quantize_dynamic(model: TimeSformer) -> TimeSformer:
    quantized = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notice that eager quantization moves to torchao
        return torch.ao.quantization.quantize_dynamic(quantized, {nn.Linear}, dtype=torch.qint8)


def _clips(calibration) -> list[torch.Tensor] | None:
    if calibration is None:
        return None
    batches = [calibration] if isinstance(calibration, torch.Tensor) else list(calibration)
    for i, clips in enumerate(batches):
        if not isinstance(clips, torch.Tensor) or clips.ndim != 5:
            got = tuple(clips.shape) if isinstance(clips, torch.Tensor) else type(clips).__name__
            raise ValueError(f"calibration must be clips b t c H W (a tensor or a list of them); item {i} is {got}")
    return [clips.detach().cpu().float() for clips in batches]


def optimize(
    model: TimeSformer,
    precision: str = "fp32",
    compile: bool = False,
    example: torch.Tensor | None = None,
    device: str | torch.device | None = None,
    calibration: torch.Tensor | Iterable[torch.Tensor] | None = None,
) -> OptimizedTimeSformer:
    """An inference copy of ``model`` in ``precision`` ("fp32", "bf16", "fp16" or "int8"), compiled when
    ``compile`` (with CUDA graphs on a GPU).

    Args:
        example: a clip ``b t c H W`` to run once now, so compiling (and any fallback to eager) happens here
            rather than on the first real call.
        device: where the copy runs (default: where ``model`` is); the model itself never moves.
        calibration: int8 static only: clips ``b t c H W`` (a tensor or a list of batches) whose activation
            ranges set the int8 scales. Without it, the first input of each shape calibrates its graph: pass a
            few clips of the data the model will see (8 or more) for scales that fit all of it.

    The chosen method is ``.method``: "fp32", "bf16", "fp16", "int8-static" or "int8-dynamic".
    """
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if precision == "int8" and device.type != "cpu":  # both int8 methods have CPU kernels only
        raise UserError(f"precision='int8' runs on the cpu; got device {device} (use bf16 on the GPU)")
    method = precision
    if precision == "int8":
        method = "int8-static" if compile and torchao_pt2e() is not None else "int8-dynamic"
        if compile and method == "int8-dynamic":
            warnings.warn(
                "precision='int8' with compile: torchao is not installed, so the linears are quantized "
                "dynamically; `pip install torchao` for static int8 (oneDNN int8 kernels, ~2x faster)",
                RuntimeWarning,
                stacklevel=2,
            )
    fast = copy.deepcopy(model).eval().requires_grad_(False).to(device)
    unfuse(fast)  # from the reference modules: a model fused for training folds for good here
    if method == "int8-dynamic":  # unfolded: the two maps quantize with less drift than their product (measured)
        fast = _quantize_dynamic(fast)
    else:
        fold_stage_fc(fast)
    fuse(fast, mlp=False, fold=False, quiet=True)  # the attention kernel measured fastest for inference
    if precision in HALF:
        fast = fast.to(HALF[precision])
    out = OptimizedTimeSformer(fast, precision, compile, method, _clips(calibration))
    if example is not None:
        out(example)
    return out
