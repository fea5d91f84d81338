"""What others build on the model: LoRA (peft), forward hooks and quantization-aware training wrap or hook its
``nn.Linear`` modules, so in training as in eval every linear map must run as its module."""

import copy
import warnings

import pytest
import torch
from torch import nn

import timesformer as tf

from ..conftest import small_model

SCHEMES = tf.ATTENTIONS
CLS = ("average", "global")
VIDEO = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
MASK = torch.tensor([[True] * 4, [True, True, True, False]])
# every linear map of every scheme: the pre-stages' fc are temporal_fc (divided, axial), local_fc (sparse), width_fc
TARGETS = ["qkv", "proj", "fc1", "fc2", "temporal_fc", "local_fc", "width_fc"]


def model_for(scheme: str, cls: str) -> tf.TimeSformer:
    return small_model(attention=scheme, cls_attention=cls, temporal_fc=True).train()


def lora_model(scheme: str, cls: str):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0, init_lora_weights=False)
    return peft.get_peft_model(model_for(scheme, cls), config)  # init_lora_weights=False: adapters are non-zero


@pytest.mark.parametrize("cls", CLS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_lora_trains_every_adapter_and_computes_the_merged_model(scheme, cls):
    model = lora_model(scheme, cls)
    adapted = [name for name, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    targets = [n for n, m in model_for(scheme, cls).named_modules() if n.split(".")[-1] in TARGETS]
    assert len(adapted) == len(targets) > 0
    logits = model(VIDEO, MASK)
    logits.square().sum().backward()
    for name, param in model.named_parameters():
        if "lora_" in name:
            assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} got no gradient"
    merged = copy.deepcopy(model).merge_and_unload()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(logits.detach(), merged(VIDEO, MASK), atol=1e-5, rtol=1e-5)
        # and the adapters matter: the base model computes something else
        base = model_for(scheme, cls)
        assert (base(VIDEO, MASK) - logits).abs().max() > 1e-3


@pytest.mark.parametrize("cls", CLS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_merged_lora_model_saves_as_a_native_checkpoint(tmp_path, scheme, cls):
    model = lora_model(scheme, cls)
    merged = model.merge_and_unload().eval()
    folder = tf.save_pretrained(merged, tmp_path / "merged")
    loaded = tf.load_pretrained(folder).eval()
    assert type(loaded).__name__ == "TimeSformer" and not any("lora" in k for k in loaded.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(loaded(VIDEO, MASK), merged(VIDEO, MASK), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("cls", CLS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_forward_hooks_fire_on_every_linear_in_training_and_eval(scheme, cls):
    model = model_for(scheme, cls)
    linears = {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    for training in (True, False):
        fired = set()
        handles = [
            m.register_forward_hook(lambda mod, args, out, name=name: fired.add(name))
            for name, m in model.named_modules()
            if isinstance(m, nn.Linear)
        ]
        model.train(training)
        with torch.set_grad_enabled(training):
            out = model(VIDEO, MASK)
        if training:
            out.sum().backward()
        for handle in handles:
            handle.remove()
        assert fired == linears, f"training={training}: never ran {sorted(linears - fired)}"


def _hand_fake_quantized(model: tf.TimeSformer, qat: nn.Module) -> tf.TimeSformer:
    """The reference model whose every linear weight is replaced by the QAT module's fake-quantized weight."""
    hand = copy.deepcopy(model)
    qat_modules = dict(qat.named_modules())
    with torch.no_grad():
        for name, module in hand.named_modules():
            if isinstance(module, nn.Linear):
                fq = qat_modules[name].weight_fake_quant
                module.weight.copy_(
                    torch.fake_quantize_per_tensor_affine(
                        module.weight, float(fq.scale), int(fq.zero_point), fq.quant_min, fq.quant_max
                    )
                )
    return hand


@pytest.mark.parametrize("cls", CLS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantization_aware_training_runs_the_fake_quantized_weights(scheme, cls):
    """``prepare_qat`` swaps every ``nn.Linear`` for ``nn.qat.Linear`` (a subclass): training must run those modules,
    so the logits equal the reference model's with each weight fake-quantized by hand (4-bit: a visible change)."""
    from torch.ao.quantization import FakeQuantize, MinMaxObserver, QConfig, prepare_qat

    model = model_for(scheme, cls)
    weight_fq = FakeQuantize.with_args(
        observer=MinMaxObserver, quant_min=-8, quant_max=7, dtype=torch.qint8, qscheme=torch.per_tensor_symmetric
    )
    qat = copy.deepcopy(model)
    for module in qat.modules():  # the linears only, and no activation fake-quant: the weights decide the output
        module.qconfig = QConfig(activation=nn.Identity, weight=weight_fq) if isinstance(module, nn.Linear) else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notice that eager-mode QAT moves to torchao
        prepare_qat(qat, mapping={nn.Linear: torch.ao.nn.qat.Linear}, inplace=True)
    assert sum(type(m) is torch.ao.nn.qat.Linear for m in qat.modules()) == sum(
        isinstance(m, nn.Linear) for m in model.modules()
    )
    out = qat(VIDEO, MASK)  # training mode: observes the weights, then fake-quantizes them
    out.sum().backward()
    qat.apply(torch.ao.quantization.disable_observer)
    hand = _hand_fake_quantized(model, qat)
    with torch.no_grad():
        expected = hand(VIDEO, MASK)
        torch.testing.assert_close(out.detach(), expected, atol=1e-5, rtol=1e-5)
        assert (model(VIDEO, MASK) - expected).abs().max() > 1e-3  # 4-bit weights change the output


def test_the_model_reads_no_submodule_weights_outside_initialisation():
    """The reference path calls modules; only weight initialisation touches ``.weight`` / ``.bias`` directly."""
    import ast
    from pathlib import Path

    package = Path(tf.model.__file__).parent
    reads = []
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef) or func.name.startswith("_init"):
                continue
            reads += [
                f"{path.name}:{node.lineno} in {func.name}"
                for node in ast.walk(func)
                if isinstance(node, ast.Attribute) and node.attr in ("weight", "bias")
            ]
    assert reads == []
