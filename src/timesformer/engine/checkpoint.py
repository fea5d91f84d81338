"""Run checkpoints: ``<run>/<tag>/`` holds ``model.safetensors`` + ``config.json`` (what ``load_pretrained``
reads) and ``state.pt`` (the run's position -- epoch, micro-batch inside it, step, best score --, optimizer,
grad scaler, EMA, the RNG states of every rank; plain tensors and numbers, read with ``weights_only=True``).

A checkpoint is written into ``<tag>.tmp/`` (every file fsynced), then swapped in by renames: the old folder
becomes ``<tag>.old``, the new one ``<tag>``, then the old one is removed. A crash at any point leaves either
the new checkpoint or the previous good one (``<tag>`` or ``<tag>.old``), which ``find_checkpoint`` finds.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import torch

from ..files import fsync_dir, save_folder, write_atomic, write_json_atomic


def _fsync(path: Path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def save_checkpoint(run_dir: Path, tag: str, model, state: dict, adapters: tuple[dict, dict] | None = None) -> Path:
    """``adapters``: ``(tensors, peft's adapter config)`` of a LoRA run, written beside the (merged) model as peft
    writes them: ``adapter_model.safetensors`` and ``adapter_config.json``."""
    run_dir = Path(run_dir)
    final, tmp, old = run_dir / tag, run_dir / f"{tag}.tmp", run_dir / f"{tag}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    config = {"format": "timesformer", "version": 1, "config": dataclasses.asdict(model.config)}
    save_folder(tmp, model.state_dict(), config)
    if adapters is not None:
        from safetensors.torch import save_file

        tensors = {k: v.detach().contiguous().cpu() for k, v in adapters[0].items()}
        write_atomic(tmp / "adapter_model.safetensors", lambda path: save_file(tensors, path))
        write_json_atomic(tmp / "adapter_config.json", adapters[1])
    torch.save(state, tmp / "state.pt")
    _fsync(tmp / "state.pt")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(run_dir)  # the renames themselves survive a power cut
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(run_dir: Path, tag: str = "last") -> Path | None:
    """The newest complete checkpoint folder for ``tag``: ``<tag>``, else ``<tag>.old`` (a crash mid-swap)."""
    for candidate in (Path(run_dir) / tag, Path(run_dir) / f"{tag}.old"):
        if (candidate / "model.safetensors").is_file() and (candidate / "state.pt").is_file():
            return candidate
    return None


def load_state(folder: Path) -> dict:
    return torch.load(folder / "state.pt", map_location="cpu", weights_only=True)


def rng_state(device: torch.device) -> dict:
    """This process's generators that a resumed run needs: the CPU one and, on a GPU, its CUDA one (dropout and
    drop path draw from them; data order and augmentation have seeded generators of their own)."""
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state, device: torch.device, *, cuda_seed: int) -> None:
    """Restore ``rng_state``'s generators; on a GPU with no CUDA state saved (a run saved on a CPU), seed its
    generator with ``cuda_seed`` (which should differ between ranks)."""
    if isinstance(state, torch.Tensor):  # checkpoints written before CUDA states were kept
        state = {"cpu": state, "cuda": None}
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda":
        if state.get("cuda") is not None:
            torch.cuda.set_rng_state(state["cuda"], device)
        else:
            torch.cuda.manual_seed(cuda_seed)
