"""LoRA fine-tuning through ``peft`` (``timesformer finetune --lora R``): low-rank adapters on the model's own
``nn.Linear`` modules, the head trained in full, everything else frozen.

The model stays a ``TimeSformer`` (peft's ``inject_adapter_in_model`` swaps the targeted linears for its LoRA
layers in place), so the training loop, the EMA and the checkpoints treat it as any model. A checkpoint holds the
merged model -- a native one, which ``predict``, ``eval`` and ``export`` load as they load any -- and beside it the
adapters in peft's own files (``adapter_model.safetensors``, with the head, and ``adapter_config.json``: peft's
``PeftModel.from_pretrained`` reads them), from which a resumed run continues: the frozen base comes again from the
run's pretrained weights, checked against the saved merged model.
"""

from __future__ import annotations

import copy

from torch import nn

from .config import RunError

TARGETS = ("qkv", "proj", "fc1", "fc2", "temporal_fc")


def _peft():
    try:
        import peft
    except ImportError:
        raise RunError("LoRA needs peft: pip install 'timesformer[peft]'") from None
    return peft


def lora_config(model: nn.Module, rank: int, alpha: float, targets) -> object:
    """peft's ``LoraConfig`` for ``model``: every ``nn.Linear`` whose own name is one of ``targets``."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name.split(".")[-1] in targets]
    if not names:
        raise RunError(f"lora_targets {list(targets)}: no nn.Linear of the model is named so; its linears: {TARGETS}")
    return _peft().LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=names, lora_dropout=0.0)


def add_lora(model: nn.Module, rank: int, alpha: float = 0.0, targets=TARGETS) -> nn.Module:
    """``model`` with rank-``rank`` adapters (scale ``alpha / rank``; alpha 0: 1) on ``targets``: only they and the
    head train. Returns the same module."""
    _peft().inject_adapter_in_model(lora_config(model, rank, alpha, targets), model)
    for name, p in model.named_parameters():
        p.requires_grad = "lora_" in name or name.startswith("head.")
    return model


def has_lora(model: nn.Module) -> bool:
    return any("lora_" in name for name, _ in model.named_parameters())


def merged(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every adapter merged into its linear, which takes the adapter's place: the native
    model (its state dict has the keys of one that never had adapters)."""
    from peft.tuners.lora import LoraLayer

    out = copy.deepcopy(model)
    for name, module in list(out.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent) if parent else out, child, module.get_base_layer())
    return out


PEFT_PREFIX = "base_model.model."  # how peft's saved adapters name a module of the model they wrap


def adapter_state(model: nn.Module) -> dict:
    """The trained tensors -- every adapter's and the head's -- named as peft's ``adapter_model.safetensors``
    names them (``PeftModel.from_pretrained`` reads the folder)."""
    return {_peft_name(k): v for k, v in model.state_dict().items() if _trained(k)}


def _trained(name: str) -> bool:
    return "lora_" in name or name.startswith("head.")


def _peft_name(name: str) -> str:
    return PEFT_PREFIX + name.replace(".default.", ".")


def load_adapter_state(model: nn.Module, state: dict) -> None:
    """``adapter_state``'s tensors back onto ``model`` (adapters already added); every one must be there."""
    mine = {_peft_name(k): k for k in model.state_dict() if _trained(k)}
    if state.keys() != mine.keys():
        first = sorted(mine.keys() ^ state.keys())[0]
        raise RunError(f"the saved adapters are not this run's (first difference: {first})")
    model.load_state_dict({mine[k]: v for k, v in state.items()}, strict=False)


def adapter_config(model: nn.Module) -> dict:
    """peft's ``adapter_config.json`` for the adapters ``model`` has (rank, alpha, the adapted linears, the head)."""
    names = [name for name, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    layer = model.get_submodule(names[0])
    config = (
        _peft()
        .LoraConfig(
            r=layer.r["default"],
            lora_alpha=layer.lora_alpha["default"],
            target_modules=names,
            lora_dropout=0.0,
            modules_to_save=["head"],
        )
        .to_dict()
    )
    return {k: sorted(v) if isinstance(v, set) else getattr(v, "value", v) for k, v in config.items()}
