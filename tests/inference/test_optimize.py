"""timesformer.optimize: every precision against eager, the input left alone, masks, compile's fallback, static
int8 (torchao PT2E, compiled) and its fallbacks, and int8 agreement with fp32 on a trained model."""

import copy
import warnings

import pytest
import torch

import timesformer as tf
from timesformer.fast import PRECISIONS
from timesformer.fused import fold_stage_fc

from ..conftest import small_model

VIDEO = torch.randn(3, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # not the global RNG
# at import, whose state depends on what pytest collected first (int8 drifts 3-5 % depending on the clip)
MASK = torch.tensor([[True] * 4, [True, True, False, False], [True] * 4])
# how far each precision may move the logits of a random-init model, relative to their largest magnitude
TOLERANCE = {"fp32": 1e-6, "bf16": 0.03, "fp16": 0.005, "int8": 0.05}


@pytest.mark.parametrize("pos_emb", ["rotary", "learned"])
def test_a_model_cast_to_bf16_runs_in_bf16(pos_emb):
    """The rotary angles follow the weights' dtype (fp32 angles used to turn bf16 queries into fp32 ones, and the
    next linear layer refused them)."""
    model = small_model(pos_emb=pos_emb)
    with torch.no_grad():
        ref = model(VIDEO, MASK)
        low = copy.deepcopy(model).to(torch.bfloat16)(VIDEO.bfloat16(), MASK)
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max() <= TOLERANCE["bf16"] * ref.abs().max()


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("scheme", ["divided", "joint"])
def test_optimize_matches_eager_within_its_tolerance(precision, scheme):
    model = small_model(attention=scheme)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = tf.optimize(model, precision=precision)
    with torch.no_grad():
        for mask in (None, MASK):
            ref = model(VIDEO, mask)
            out = fast(VIDEO, mask)
            assert out.dtype == torch.float32 and out.shape == ref.shape
            assert (out - ref).abs().max() <= TOLERANCE[precision] * ref.abs().max(), precision
        torch.testing.assert_close(
            fast.forward_features(VIDEO),
            model.forward_features(VIDEO),
            atol=3 * TOLERANCE[precision] * model.forward_features(VIDEO).abs().max(),
            rtol=0,
        )
    # the model passed in is untouched: same weights, same dtype, still trainable
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())
    if precision == "int8":  # without compile: dynamic quantization of every linear layer
        assert fast.method == "int8-dynamic"
        assert sum(type(m).__name__ == "Linear" and "quantized" in type(m).__module__ for m in fast.modules()) == sum(
            isinstance(m, torch.nn.Linear) for m in model.modules()
        )


@pytest.mark.parametrize("scheme", ["divided", "axial", "sparse"])
def test_folding_each_stage_fc_into_its_projection_is_exact(scheme):
    model = small_model(attention=scheme)
    folded = fold_stage_fc(copy.deepcopy(model))
    assert not any("_fc" in name for name, _ in folded.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(folded(VIDEO, MASK), model(VIDEO, MASK), atol=1e-5, rtol=1e-5)


def test_optimize_names_what_it_takes():
    with pytest.raises(ValueError, match=r"precision must be one of \('fp32', 'bf16', 'fp16', 'int8'\); got 'fp8'"):
        tf.optimize(small_model(), precision="fp8")
    with pytest.raises(ValueError, match="video must be"):
        tf.optimize(small_model())(torch.randn(4, 3, 32, 32))


def test_a_failed_compile_warns_and_runs_eagerly(monkeypatch):
    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("InductorError: no working C++ compiler\nmore detail")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    model = small_model()
    with pytest.warns(
        RuntimeWarning,
        match=r"torch.compile failed \(RuntimeError: InductorError: no working C\+\+ "
        r"compiler\); running forward eagerly",
    ):
        fast = tf.optimize(model, precision="bf16", compile=True, example=VIDEO)
    assert not fast.compiled and callable(fast.compile)  # nn.Module.compile is not shadowed
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning: it stays eager
        with torch.no_grad():
            torch.testing.assert_close(fast(VIDEO), tf.optimize(model, precision="bf16")(VIDEO))


def test_only_a_first_compiled_call_falls_back(monkeypatch):
    """A compiled call that ran at a shape before and then fails is a real error, raised, not a failed compile."""

    def fails_later(fn, **kwargs):
        calls = []

        def run(*args):
            calls.append(1)
            if len(calls) > 1:
                raise RuntimeError("device fault on the second call")
            return fn(*args)

        return run

    monkeypatch.setattr(torch, "compile", fails_later)
    fast = tf.optimize(small_model(), precision="fp32", compile=True, example=VIDEO)
    assert fast.compiled
    with pytest.raises(RuntimeError, match="device fault on the second call"), torch.no_grad():
        fast(VIDEO)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_model_matches_eager(precision):
    model = small_model()
    fast = tf.optimize(model, precision=precision, compile=True, example=VIDEO)
    assert fast.compiled
    eager = tf.optimize(model, precision=precision)
    torch.testing.assert_close(fast(VIDEO), eager(VIDEO), atol=2 * TOLERANCE[precision] + 1e-5, rtol=1e-2)


@pytest.mark.parametrize("compile", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["dynamic", "static"])
def test_int8_agrees_with_fp32_on_a_trained_model(trained_motion, compile):
    """int8 names the same class as fp32 on >= 99 % of 480 held-out clips, and moves the logits by under 5 % of
    their mean magnitude: dynamic (eager), and static (calibrated on 8 training clips, compiled)."""
    from torch.utils.data import DataLoader

    from timesformer.data import collate

    if compile:
        pytest.importorskip("torchao")
    model, test, calibration = trained_motion
    fast = tf.optimize(model, precision="int8", compile=compile, calibration=calibration)
    assert fast.method == ("int8-static" if compile else "int8-dynamic")
    ref, low, labels = [], [], []
    with torch.no_grad():
        for batch in DataLoader(test, batch_size=120, collate_fn=collate):
            ref.append(model(batch["video"]))
            low.append(fast(batch["video"]))
            labels.append(batch["label"])
    ref, low, labels = torch.cat(ref), torch.cat(low), torch.cat(labels)
    assert (ref.argmax(1) == labels).float().mean() > 0.5  # it learned something (chance: 25 %)
    assert (low.argmax(1) == ref.argmax(1)).float().mean() >= 0.99
    assert (low - ref).abs().mean() < 0.05 * ref.abs().mean()
    assert fast.compiled == compile


@pytest.mark.parametrize("cls_attention", ["global", pytest.param("average", marks=pytest.mark.slow)])
def test_static_int8_runs_compiled_within_its_tolerance(cls_attention):
    """torchao's PT2E graph, calibrated on clips, compiled: oneDNN int8 linears. Batch 1 works (export used to fix
    the size-1 batch and fail); the slow case adds batch 3 on the same graph, a mask and pooled features.

    The same clip gives the same logits call after call: with the seed's global cls token, inductor's fused
    ``cls + linear(...)`` kernel used to accumulate into the frozen cls token, shifting every later call."""
    pytest.importorskip("torchao")
    model = small_model(cls_attention=cls_attention, pos_emb="rotary")
    fast = tf.optimize(model, precision="int8", compile=True, example=VIDEO[:1], calibration=VIDEO)
    assert fast.method == "int8-static" and fast.compiled
    batches = (VIDEO[:1],) if cls_attention == "global" else (VIDEO[:1], VIDEO)  # a second size compiles again
    with torch.no_grad():
        for video in batches:
            ref = model(video)
            first = fast(video)
            assert (first - ref).abs().max() <= TOLERANCE["int8"] * ref.abs().max()
            assert torch.equal(fast(video), first) and torch.equal(fast(video), first)
    assert list(fast._entries) == [("forward", False, tuple(VIDEO.shape[1:]))]  # one graph for every batch size
    if cls_attention == "average":
        with torch.no_grad():
            ref, feats = model(VIDEO, MASK), model.forward_features(VIDEO)
            assert (fast(VIDEO, MASK) - ref).abs().max() <= TOLERANCE["int8"] * ref.abs().max()
            assert (fast.forward_features(VIDEO) - feats).abs().max() <= 3 * TOLERANCE["int8"] * feats.abs().max()


@pytest.mark.parametrize("onednn_bf16", [True, False], ids=["onednn-bf16", "avx2"])
def test_static_int8_runs_its_float_work_in_bf16_only_where_onednn_has_bf16_kernels(monkeypatch, onednn_bf16):
    """On an AVX2-only CPU oneDNN's bf16 fallback had not finished one int8 linear of a dim-96 model in 4 min: the
    graph runs without bf16 autocast there (the compiled graph is stood in for by one that reports the autocast)."""
    pytest.importorskip("torchao")
    import timesformer.fast as fast_module

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn_bf16)
    expected = torch.bfloat16 if onednn_bf16 else torch.float32
    assert fast_module.int8_static_float_dtype() == expected
    autocast = []

    def graph(video):
        autocast.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
        return torch.zeros(len(video), 5)

    monkeypatch.setattr(fast_module, "quantize_static", lambda *args: graph)
    monkeypatch.setattr(fast_module.torch, "compile", lambda fn, **kw: fn)
    fast = tf.optimize(small_model(), precision="int8", compile=True, calibration=VIDEO)
    assert fast.method == "int8-static" and fast(VIDEO).shape == (len(VIDEO), 5)
    assert autocast == [torch.bfloat16 if onednn_bf16 else False]


@pytest.mark.parametrize("vnni", [False, True], ids=["no-vnni", "vnni"])
def test_static_int8_quantizes_activations_in_7_bits_where_the_cpu_lacks_vnni(monkeypatch, vnni):
    """Without VNNI, oneDNN's int8 kernels add pairs of u8 x s8 products in 16-bit registers, which saturate at full
    range: on an AVX2 EPYC that took a 300-step model's agreement with fp32 from 98.67 % to 94.67 % (600 clips, 64
    calibration clips; ``benchmarks/results/openvino-int8-study-2026-12-05b-epyc-avx2.md``). The graph built there
    holds 0-127 activations; with VNNI 0-255."""
    pytest.importorskip("torchao")
    import timesformer.fast as fast_module

    monkeypatch.setattr(fast_module, "cpu_has_vnni", lambda: vnni, raising=False)  # (absent before the fix)
    built = []
    real = fast_module.quantize_static
    monkeypatch.setattr(fast_module, "quantize_static", lambda *args: built.append(real(*args)) or built[-1])
    monkeypatch.setattr(fast_module.torch, "compile", lambda fn, **kw: fn)  # the graph as built, run eagerly
    model = small_model()
    fast = tf.optimize(model, precision="int8", compile=True, calibration=VIDEO)
    with torch.no_grad():
        ref, low = model(VIDEO), fast(VIDEO)
    assert fast.method == "int8-static" and len(built) == 1
    quantize = torch.ops.quantized_decomposed.quantize_per_tensor.default
    ranges = {(n.args[3], n.args[4]) for n in built[0].graph.nodes if n.target == quantize}
    assert ranges == {(0, 255 if vnni else 127)}
    assert fast.reduce_range == (not vnni)
    assert (low - ref).abs().max() <= TOLERANCE["int8"] * ref.abs().max()


@pytest.mark.parametrize(
    "flags, vnni",
    [
        ("fpu sse2 avx avx2 fma", False),
        ("avx2 avx512f avx512_vnni", True),
        ("avx2 avx_vnni", True),
        ("avx512f amx_tile amx_int8", True),
    ],
    ids=["avx2", "avx512-vnni", "avx-vnni", "amx"],
)
def test_vnni_is_read_from_torchs_capabilities_or_from_cpuinfo(monkeypatch, tmp_path, flags, vnni):
    import timesformer.fast as fast_module

    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n")
    assert fast_module.cpu_has_vnni(info) == vnni
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: dict.fromkeys(flags.split(), True), raising=False)
    assert fast_module.cpu_has_vnni() == vnni
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)  # an older torch: /proc/cpuinfo
    assert fast_module.cpu_has_vnni() == fast_module.cpu_has_vnni("/proc/cpuinfo")
    # unreadable: True, the full range every CPU had before the check
    assert fast_module.cpu_has_vnni(tmp_path / "missing")
    (bad := tmp_path / "binary").write_bytes(b"flags\t: \xff\xfe avx2\n")
    assert fast_module.cpu_has_vnni(bad)
    (odd := tmp_path / "odd").write_text("flags avx2\n")  # no colon: no flags read
    assert not fast_module.cpu_has_vnni(odd)


def test_static_int8_falls_back_to_dynamic_with_a_warning(monkeypatch):
    pytest.importorskip("torchao")
    import timesformer.fast as fast_module

    def broken(*args):
        raise RuntimeError("export failed: data-dependent control flow")

    monkeypatch.setattr(fast_module, "quantize_static", broken)
    model = small_model()
    with pytest.warns(
        RuntimeWarning,
        match=r"int8 static quantization failed \(RuntimeError: export failed: "
        r"data-dependent control flow\); running forward eagerly with dynamic",
    ):
        fast = tf.optimize(model, precision="int8", compile=True, example=VIDEO)
    assert not fast.compiled
    with torch.no_grad():
        ref = model(VIDEO)
        assert (fast(VIDEO) - ref).abs().max() <= TOLERANCE["int8"] * ref.abs().max()
    assert any("quantized" in type(m).__module__ for m in fast.modules())  # dynamic int8, not fp32


def test_int8_without_torchao_is_dynamic_and_says_so(monkeypatch):
    import timesformer.fast as fast_module

    monkeypatch.setattr(fast_module, "torchao_pt2e", lambda: None)
    with pytest.warns(RuntimeWarning, match="torchao is not installed, so the linears are quantized dynamically"):
        fast = tf.optimize(small_model(), precision="int8", compile=True)
    assert fast.method == "int8-dynamic"
    assert tf.optimize(small_model(), precision="int8").method == "int8-dynamic"  # no compile: no warning needed


def test_calibration_must_be_clips():
    with pytest.raises(ValueError, match=r"calibration must be clips b t c H W .*; item 1 is \(4, 3, 32, 32\)"):
        tf.optimize(small_model(), precision="int8", calibration=[VIDEO, VIDEO[0]])
