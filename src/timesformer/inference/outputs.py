"""Files per video: the timelines of ``predict --window``, the features of ``extract``, the rollout of ``explain``.

Outputs are named after their video (``out/<stem>.<suffix>``); where two inputs share a stem, after their path
relative to the inputs' common folder (``out/a/x...``, ``out/b/x...``), so that no output overwrites another. Each
records the absolute path of its video, and a file written for another video (an earlier run on a file of the same
name) is never replaced: an error names both.

A file that can't be decoded raises ``DecodeError`` before anything of it is written; the loops over many files
(``predict_files``, ``extract_files``) pass it over and return it with the results.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from ..data import ClipSpec, DecodeError
from ..errors import UserError
from ..files import write_atomic, write_json_atomic
from .predict import Predictor

EXTRACT_FORMATS = ("npy", "safetensors")


def output_bases(paths: Sequence, out: str | os.PathLike) -> dict[str, Path]:
    """Where each input's outputs go (``out / name``, suffixes appended), keyed by ``str(path)``: the file's stem; where
    two inputs share a stem, its path relative to their common folder."""
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) == len(stems):
        return {str(p): Path(out) / Path(p).stem for p in paths}
    resolved = [Path(p).resolve() for p in paths]
    root = Path(os.path.commonpath([str(r.parent) for r in resolved]))
    return {str(p): Path(out) / r.relative_to(root) for p, r in zip(paths, resolved)}


def output_path(base: Path, suffix: str, video=None, recorded_video: Callable | None = None) -> Path:
    """``base`` + ``suffix``, its folder created. With ``video`` and ``recorded_video(file)`` (the absolute path an
    output records of its video): an existing file written for another video is a ``UserError`` naming both."""
    path = base.with_name(base.name + suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    if video is not None and path.exists():
        try:
            earlier = recorded_video(path)
        except (OSError, ValueError, KeyError):
            earlier = None
        if earlier is not None and Path(earlier) != Path(video).resolve():
            raise UserError(
                f"{path} holds the output for {earlier}; {video} has the same name and would "
                f"overwrite it: give another --out"
            )
    return path


def _source(path) -> str:
    return str(Path(path).resolve())


# --- predict ----------------------------------------------------------------------------------------------------
def timeline_file(predictor: Predictor, path, base: Path, *, window: float, stride: float | None, topk: int) -> dict:
    """``predictor.timeline`` of one video into ``base.timeline.json`` (with ``source``, the video's absolute path)
    and a plot, ``base.timeline.png``: ``{"path", "windows", "duration", "timeline"}``, and ``"partial"``."""
    from ..viz import plot_timeline

    target = output_path(base, ".timeline.json", path, lambda f: json.loads(f.read_text())["source"])
    timeline = predictor.timeline(path, window=window, stride=stride or window, topk=topk)
    write_json_atomic(target, {**timeline, "source": _source(path)})
    plot_timeline(timeline, output_path(base, ".timeline.png"), top=topk)
    row = {"path": str(path), "windows": len(timeline["entries"]), "duration": timeline["duration"]}
    return {**row, "timeline": str(target), **({"partial": timeline["partial"]} if "partial" in timeline else {})}


def predict_files(
    predictor: Predictor,
    paths: Sequence,
    *,
    topk: int = 5,
    window: float | None = None,
    stride: float | None = None,
    out: str | os.PathLike = ".",
    progress: Callable[[int], None] | None = None,
) -> tuple[list[dict], list[tuple[str, DecodeError]]]:
    """Top-k predictions for each video (``Predictor.predict``), or with ``window`` its timeline written under
    ``out`` (:func:`timeline_file`). Returns the results in order and the ``(path, error)`` of files that could not
    be decoded. ``progress(done)`` after each file."""
    bases = output_bases(paths, out) if window else {}
    results, failed = [], []
    for k, path in enumerate(paths):
        try:
            if window:
                results.append(
                    timeline_file(predictor, path, bases[str(path)], window=window, stride=stride, topk=topk)
                )
            else:
                results.append(predictor.predict(path, topk=topk))
        except DecodeError as err:
            failed.append((str(path), err))
        if progress is not None:
            progress(k + 1)
    return results, failed


# --- extract ----------------------------------------------------------------------------------------------------
def extract_file(predictor: Predictor, path, base: Path, *, kinds: Sequence[str], format: str = "npy") -> list[Path]:
    """The features of one video (``Predictor.features_all``: one decode, one model call) into files beside
    ``base``: ``npy``, ``.<kind>.npy`` each plus ``.source.txt`` (the video's absolute path: .npy holds no metadata);
    ``safetensors``, one file with a tensor per kind and the path in its metadata. Returns the files written."""
    if format not in EXTRACT_FORMATS:
        raise ValueError(f"extract format must be one of {EXTRACT_FORMATS}; got {format!r}")
    if format == "npy":
        targets = {kind: output_path(base, f".{kind}.npy") for kind in kinds}
        sidecar = output_path(base, ".source.txt", path, lambda f: f.read_text().strip())
    else:
        target = output_path(base, ".safetensors", path, _safetensors_video)
    features = predictor.features_all(path, kinds)
    if format == "npy":
        for kind, tensor in features.items():
            write_atomic(targets[kind], lambda tmp, a=tensor.numpy(): _save_npy(tmp, a))
        write_atomic(sidecar, lambda tmp: Path(tmp).write_text(_source(path) + "\n"))
        return [*targets.values(), sidecar]
    from safetensors.torch import save_file

    tensors = {kind: t.contiguous() for kind, t in features.items()}
    write_atomic(target, lambda tmp: save_file(tensors, tmp, metadata={"video": _source(path)}))
    return [target]


def extract_files(
    predictor: Predictor,
    paths: Sequence,
    out: str | os.PathLike,
    *,
    kinds: Sequence[str] = ("pooled",),
    format: str = "npy",
    progress: Callable[[int], None] | None = None,
) -> tuple[int, list[tuple[str, DecodeError]]]:
    """:func:`extract_file` for each video, into ``out``. Returns how many were written and the ``(path, error)`` of
    files that could not be decoded. ``progress(done)`` after each file."""
    bases = output_bases(paths, out)
    written, failed = 0, []
    for k, path in enumerate(paths):
        try:
            extract_file(predictor, path, bases[str(path)], kinds=kinds, format=format)
            written += 1
        except DecodeError as err:
            failed.append((str(path), err))
        if progress is not None:
            progress(k + 1)
    return written, failed


def _save_npy(path, array):
    import numpy as np

    with open(path, "wb") as f:  # a file object: np.save would add ".npy" to a name
        np.save(f, array)


def _safetensors_video(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return (f.metadata() or {}).get("video")


# --- explain ----------------------------------------------------------------------------------------------------
def explain_file(
    model,
    path,
    out: str | os.PathLike,
    *,
    sampling: str | None = None,
    sampling_rate: int | None = None,
    fps: float | None = None,
    decoder: str = "pyav",
) -> dict:
    """The attention rollout of one video (``explain_video``, its centre clip sampled as the model's config says
    unless ``sampling``/``sampling_rate``/``fps`` are given; decoded by ``decoder``) into ``out``:
    ``<name>.explain.png`` (frames, overlays, frame importance), ``.explain.gif`` and ``.explain.json`` (the maps,
    importance, prediction and ``source``).
    Returns ``{"predicted", "png", "gif", "json"}``."""
    from ..viz import plot_explanation
    from .explain import explain_video

    base = output_bases([path], out)[str(path)]
    target = output_path(base, ".explain.json", path, lambda f: json.loads(f.read_text())["source"])
    spec = ClipSpec.from_config(model.config, sampling=sampling, sampling_rate=sampling_rate, fps=fps)
    result = explain_video(model, path, dataclasses.replace(spec, decoder=decoder))
    png, gif = output_path(base, ".explain.png"), output_path(base, ".explain.gif")
    plot_explanation(
        result["frames"],
        result["maps"],
        result["frame_importance"],
        png,
        gif,
        title=f"{Path(path).name}: predicted {result['predicted']}",
    )
    write_json_atomic(
        target,
        {
            "video": str(path),
            "source": _source(path),
            "sampling": {k: getattr(spec, k) for k in ("sampling", "sampling_rate", "fps")},
            "predicted": result["predicted"],
            "frame_importance": result["frame_importance"].tolist(),
            "maps": result["maps"].tolist(),
        },
    )
    return {"predicted": result["predicted"], "png": png, "gif": gif, "json": target}
