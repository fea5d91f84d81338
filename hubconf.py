"""torch.hub entry points: ``torch.hub.load(repo_dir, "timesformer_base", source="local", num_classes=400)``.

Each preset of ``timesformer.list_models()`` is an entry point; keyword arguments override its config. Pass
``checkpoint=`` (anything ``timesformer.load_pretrained`` reads: a folder, a file) for trained weights. The package
comes from ``src/`` beside this file, so a clone works without installing it.
"""

import sys
from pathlib import Path as _Path  # private: every public callable here is an entry point

dependencies = ["torch", "einops", "safetensors", "yaml", "huggingface_hub", "tqdm"]

_src = str(_Path(__file__).resolve().parent / "src")
if _src not in sys.path:
    sys.path.insert(0, _src)

import timesformer  # noqa: E402


def _entry(name: str):
    def load(checkpoint: str | None = None, **overrides):
        return timesformer.create_model(name, pretrained=checkpoint, **overrides)

    load.__name__ = name
    load.__doc__ = f"The ``{name}`` preset (``timesformer.create_model({name!r}, **overrides)``), or ``checkpoint``'s."
    return load


timesformer_base = _entry("timesformer_base")
timesformer_hr = _entry("timesformer_hr")
timesformer_l = _entry("timesformer_l")
timesformer_tiny = _entry("timesformer_tiny")
