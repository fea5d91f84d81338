"""Where a run computes and in which precision: ``pick_device`` and the ``autocast`` context."""

from __future__ import annotations

import contextlib

import torch

from .config import RunError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RunError("optim.device=cuda but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise RunError(f"optim.device must be auto, cpu or cuda; got {name!r}")
    return torch.device(name)


def inference_device(name: str = "auto", precision: str = "fp32") -> torch.device:
    """Where a trained model runs: as ``pick_device``, except that ``auto`` is the cpu for int8 (its kernels are CPU
    ones) and int8 on another device is an error."""
    device = pick_device("cpu" if precision == "int8" and name == "auto" else name)
    if precision == "int8" and device.type != "cpu":
        raise RunError(f"--precision int8 runs on the cpu; got --device {name} (use bf16 on the GPU)")
    return device


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        if device.type != "cuda":
            raise RunError("optim.precision=fp16 needs CUDA (use bf16 on CPU)")
        return torch.autocast("cuda", dtype=torch.float16)
    raise RunError(f"optim.precision must be fp32, bf16 or fp16; got {precision!r}")
