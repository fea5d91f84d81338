"""Run checkpoints: ``<run>/<tag>/`` holds ``model.safetensors`` + ``config.json`` (what ``load_pretrained``
reads) and ``state.pt`` (optimizer, EMA, RNG states, epoch, step, best metric).

A checkpoint is written into ``<tag>.tmp/`` (every file fsynced), then swapped in by renames: the old folder
becomes ``<tag>.old``, the new one ``<tag>``, then the old one is removed. A crash at any point leaves either
the new checkpoint or the previous good one (``<tag>`` or ``<tag>.old``), which ``load_checkpoint`` finds.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch

from ..pretrained import _save_folder, _write_atomic


def _fsync(path: Path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def save_checkpoint(run_dir: Path, tag: str, model, state: dict) -> Path:
    run_dir = Path(run_dir)
    final, tmp, old = run_dir / tag, run_dir / f"{tag}.tmp", run_dir / f"{tag}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    config = {"format": "timesformer", "version": 1, "config": dataclasses.asdict(model.config)}
    _save_folder(tmp, model.state_dict(), config)
    torch.save(state, tmp / "state.pt")
    _fsync(tmp / "state.pt")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
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


def write_json_atomic(path: Path, data) -> None:
    _write_atomic(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"))
