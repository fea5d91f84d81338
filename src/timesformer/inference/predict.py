"""Predictions on real videos: top-k classes from multi-view testing, timelines along long videos, features.

Legend: ``t c S S`` a clip; ``v`` views (clips x crops); ``d`` model dim.
"""

from __future__ import annotations

import copy
import dataclasses
import glob
import logging
import os
from pathlib import Path

import torch

from ..data import ClipSpec, DecodeError
from ..data.decode import IMAGE_EXTENSIONS, MAX_PIXELS, VIDEO_EXTENSIONS
from ..data.sampling import clip_start_times, window_count
from ..data.transforms import EvalTransform
from ..errors import UserError
from ..fast import optimize
from ..model import TimeSformer

log = logging.getLogger(__name__)


def expand_inputs(items: list[str]) -> list[Path]:
    """Files, folders (their videos and frame folders, recursively) and glob patterns -> sorted paths."""
    out: list[Path] = []
    for item in items:
        matches = (
            [Path(m) for m in sorted(glob.glob(item, recursive=True))]
            if any(c in item for c in "*?[")
            else [Path(item)]
        )
        for path in matches:
            if path.is_dir() and not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir()):
                out += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
            else:
                out.append(path)
    return out


def parse_views(text: str, option: str = "--views", max_clips: int | None = None) -> tuple[int, int]:
    """``"CLIPSxCROPS"`` (e.g. ``"1x3"``) -> ``(clips, crops)``; ``option`` names the setting in the error."""
    try:
        clips, crops = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"{option} must be CLIPSxCROPS like 1x3; got {text!r}") from None
    if clips < 1 or (max_clips is not None and clips > max_clips) or crops not in (1, 3):
        limit = f"1..{max_clips}" if max_clips is not None else ">= 1"
        raise UserError(f"{option} needs clips {limit} and crops 1 or 3; got {text!r}")
    return clips, crops


FEATURE_KINDS = ("pooled", "frames", "patches")


def token_features(tokens: torch.Tensor, t: int) -> dict[str, torch.Tensor]:
    """One video's normed tokens ``(1 + t*n) d`` (``forward_tokens``, views averaged) as its features: ``pooled: d``
    (the pooled cls token, what ``forward_features`` gives), ``frames: t d`` (patch tokens averaged per frame) and
    ``patches: (1 + t*n) d`` (all of them)."""
    return {
        "pooled": tokens[0].clone(),
        "frames": tokens[1:].reshape(t, -1, tokens.shape[-1]).mean(1),
        "patches": tokens,
    }


def _check_window(window: float, stride: float):
    if window <= 0 or stride <= 0:
        raise ValueError(f"--window and --stride must be positive seconds; got {window}, {stride}")


class ViewDecoder:
    """The test views of one video, without a model (so DataLoader workers can decode): ``(path, start, window,
    deadline) -> (views v t c S S, masks v t, why decoding stopped early or None)``."""

    def __init__(self, spec: ClipSpec):
        self.spec = spec
        self.transform = EvalTransform(
            crop_size=spec.crop_size, short_side=spec.short_side, num_crops=spec.num_crops, mean=spec.mean, std=spec.std
        )

    def __call__(self, path, start: float | None = None, window: float | None = None, deadline: float | None = None):
        with self.spec.open(path, train=False, deadline=deadline) as reader:
            duration = reader.duration if window is None else min(window, reader.duration)
            clips, masks = [], []
            for k in range(self.spec.num_clips):
                times = self.spec.times(duration, train=False, clip_index=k)
                if start is not None:
                    times = times + start
                frames, valid = reader.frames_at(times)
                for crop in range(self.spec.num_crops):
                    clips.append(self.transform.view(frames, crop))
                    masks.append(valid)
            partial = reader.partial
        return torch.stack(clips), torch.stack(masks), partial


class Predictor:
    """Runs a model on video files with the preprocessing its weights travel with.

    Args:
        model: a ``TimeSformer`` (``load_pretrained`` output).
        clips, crops: test views (``clips`` uniformly spaced dense clips x 1 or 3 crops); logits are averaged.
        sampling_rate, fps: dense sampling: ``num_frames`` frames every ``sampling_rate`` frames at ``fps``.
        sampling: ``"dense"`` or ``"segment"`` (one frame per segment of the whole video).
        The three default to the protocol the checkpoint records (``model.config``).
        max_pixels: the largest frame (width x height) decoded; a larger one is a ``DecodeError`` that costs nothing.
        decoder: a video file's decoder, ``"pyav"`` or ``"torchcodec"`` (optional; ``data.decode_torchcodec``).
        precision, compile: the fast path (``timesformer.optimize``): fp32, bf16 (weights cast once, not
            autocast) or int8 (CPU only), compiled with inductor when ``compile``. The predictor holds that
            copy of the model: later changes to ``model``'s weights don't reach it.
    """

    def __init__(
        self,
        model: TimeSformer,
        *,
        clips: int = 1,
        crops: int = 1,
        sampling: str | None = None,
        sampling_rate: int | None = None,
        fps: float | None = None,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        compile: bool = False,
        max_pixels: int = MAX_PIXELS,
        decoder: str = "pyav",
    ):
        cfg = model.config
        self.model = optimize(model, precision=precision, compile=compile, device=device)
        self.device, self.precision = torch.device(device), precision
        spec = ClipSpec.from_config(
            cfg, clips=clips, crops=crops, sampling=sampling, sampling_rate=sampling_rate, fps=fps
        )
        self.spec = dataclasses.replace(spec, max_pixels=max_pixels, decoder=decoder)
        self.decoder = ViewDecoder(self.spec)
        self.labels = list(cfg.labels) if cfg.labels else None
        self.partial = {}  # path -> why decoding stopped early, for files that decoded only partly

    def calibrate(self, paths, clips: int = 8) -> int:
        """For int8 with ``compile`` (static quantization): set the int8 scales from ``calibration_clips(paths,
        clips)``. Returns the number of clips used."""
        order = self.calibration_clips(paths, clips)
        if len(order):
            self.model.calibrate(order)
        return len(order)

    def calibration_clips(self, paths, clips: int = 8) -> torch.Tensor:
        """Views of the first ``clips`` files of ``paths`` that decode, one view per file in turn (a file's other
        views only when there are fewer files than clips): ``n t c S S`` float, as the model takes them (n may be
        fewer than ``clips``, 0 when none decodes)."""
        per_file = []
        for path in paths:
            if len(per_file) >= clips:
                break
            try:
                per_file.append(self.views(path)[0])
            except DecodeError:
                continue
        order = [
            views[i] for i in range(max((len(v) for v in per_file), default=0)) for views in per_file if i < len(views)
        ][:clips]
        return torch.stack(order) if order else torch.empty(0)

    def with_views(self, clips: int, crops: int) -> Predictor:
        """A predictor that shares this one's model but takes ``clips`` x ``crops`` test views."""
        other = copy.copy(self)
        other.spec = dataclasses.replace(self.spec, num_clips=clips, num_crops=crops)
        other.decoder = ViewDecoder(other.spec)
        other.partial = {}
        return other

    def stream(
        self, frames, *, every: int = 8, smooth: int = 1, topk: int = 5, realtime: bool = False, warmup: str = "masked"
    ):
        """Predictions on frames as they arrive: ``frames`` is a source (a file, a URL, ``-``, ``/dev/videoN``: its
        frames scaled as ``views`` scales them) or yields ``(seconds, uint8 c H W)``; see
        ``inference.stream.stream_predictions``."""
        from .stream import frames_from, stream_predictions

        if isinstance(frames, str | os.PathLike):
            frames = frames_from(str(frames), short_side=self.spec.decode_side(False), max_pixels=self.spec.max_pixels)

        return stream_predictions(self, frames, every=every, smooth=smooth, topk=topk, realtime=realtime, warmup=warmup)

    def class_name(self, index: int) -> str:
        return self.labels[index] if self.labels else str(index)

    def clip_logits(self, views: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Logits of clips on the predictor's device: ``views: v t c S S``, ``masks: v t`` -> ``v classes`` (CPU)."""
        return self.outputs(views, masks)

    def outputs(self, views: torch.Tensor, masks: torch.Tensor, kind: str = "logits") -> torch.Tensor:
        """The model on clips, on the predictor's device (padded frames masked; no mask when every frame is real):
        ``views: v t c S S``, ``masks: v t`` -> ``logits: v classes``, ``pooled: v d`` or ``tokens: v (1 + t*n) d``
        (CPU)."""
        video, mask = views.to(self.device), masks.to(self.device)
        mask = None if bool(mask.all()) else mask
        if kind == "logits":
            return self.model(video, mask).cpu()
        return getattr(self.model, {"pooled": "forward_features", "tokens": "forward_tokens"}[kind])(video, mask).cpu()

    def views(
        self,
        path: str | os.PathLike,
        start: float | None = None,
        window: float | None = None,
        deadline: float | None = None,
    ):
        """Normalised views of a video (or of ``[start, start + window)`` of it): ``(v t c S S, v t)``. A file that
        decodes only partly leaves its reason in ``self.partial[path]`` (frames past the break are masked). Decoding
        past ``deadline`` (``time.monotonic()`` seconds) raises ``DecodeTimeout``."""
        views, masks, partial = self.decoder(path, start, window, deadline)
        if partial:
            self.partial[str(path)] = partial
        return views, masks

    def logits(self, path) -> torch.Tensor:
        """Multi-view averaged logits of one video: ``classes``."""
        views, masks = self.views(path)
        return self.outputs(views, masks).mean(0)

    def top(self, probs: torch.Tensor, k: int) -> list[dict]:
        """The ``k`` most probable classes: ``[{"class", "index", "prob"}]``."""
        top = probs.topk(min(k, len(probs)))
        return [
            {"class": self.class_name(i), "index": i, "prob": p}
            for p, i in zip(top.values.tolist(), top.indices.tolist())
        ]

    def predict(self, path, topk: int = 5) -> dict:
        """``{"path", "top"}``, and ``"partial"`` (the reason) for a file that decoded only partly."""
        out = {"path": str(path), "top": self.top(self.logits(path).softmax(-1), topk)}
        return {**out, "partial": self.partial[str(path)]} if str(path) in self.partial else out

    def timeline(self, path, *, window: float, stride: float, topk: int = 5) -> dict:
        """Predictions along the whole video: one per window of ``window`` seconds every ``stride`` seconds
        (the last window ends at the video's end; a video shorter than one window gets one prediction).

        The server runs the same steps with its own model call: :meth:`timeline_windows`, the views of each
        window through the model, then :meth:`timeline_result`."""
        _check_window(window, stride)  # before the file is opened: bad settings are not a bad file
        with self.spec.open(path, train=False) as reader:
            duration = reader.duration
        windows = self.timeline_windows(duration, window=window, stride=stride)
        probs = [
            self.outputs(*self.views(path, start=start, window=window)).mean(0).softmax(-1) for start, _ in windows
        ]
        return self.timeline_result(path, duration, windows, probs, window=window, stride=stride, topk=topk)

    def timeline_windows(
        self, duration: float, *, window: float, stride: float, max_windows: int | None = None
    ) -> list[tuple[float, float]]:
        """``(start, end)`` seconds of a timeline's windows over a video of ``duration`` seconds; decode window ``k``
        with ``views(path, start, window)``. Nothing is decoded, and more than ``max_windows`` is a ``UserError``
        raised before any window is made (a header's duration is only a claim)."""
        _check_window(window, stride)
        count = window_count(duration, window=window, stride=stride)
        if max_windows is not None and count > max_windows:
            raise UserError(
                f"window {window:g} s every {stride:g} s makes {count} windows of this {duration:.0f} s video; "
                f"at most {max_windows}"
            )
        starts = clip_start_times(duration, window=window, stride=stride).tolist()
        return [(start, min(start + window, duration)) for start in starts]

    def timeline_result(
        self, path, duration: float, windows, probs, *, window: float, stride: float, topk: int = 5
    ) -> dict:
        """A timeline from its windows (:meth:`timeline_windows`) and their class probabilities (``classes`` each,
        views averaged): ``{"path", "duration", "window", "stride", "entries", "classes"}``, each entry
        ``{"start", "end", "probs", "top"}``, and ``"partial"`` for a file that decoded only partly."""
        entries = [
            {"start": start, "end": end, "probs": p.tolist(), "top": self.top(p, topk)}
            for (start, end), p in zip(windows, probs, strict=True)
        ]
        out = {
            "path": str(path),
            "duration": duration,
            "window": window,
            "stride": stride,
            "entries": entries,
            "classes": [self.class_name(i) for i in range(len(entries[0]["probs"]))],
        }
        return {**out, "partial": self.partial[str(path)]} if str(path) in self.partial else out

    def features(self, path, kind: str = "pooled") -> torch.Tensor:
        """Embeddings of one video (views averaged): ``pooled: d``; ``frames: t d`` (patch tokens averaged per
        frame); ``patches: (1 + t*n) d`` (all normed tokens, cls first, then frame by frame)."""
        return self.features_all(path, (kind,))[kind]

    def features_all(self, path, kinds=FEATURE_KINDS) -> dict[str, torch.Tensor]:
        """Several kinds of :meth:`features` of one video from one decode and one model call: ``{kind: tensor}`` in
        the order of ``kinds``. ``pooled`` alone takes ``forward_features``; any token kind, ``forward_tokens``, whose
        cls token is the pooled one."""
        unknown = [kind for kind in kinds if kind not in FEATURE_KINDS]
        if unknown or not kinds:
            raise ValueError(f"features kinds must be among {FEATURE_KINDS}; got {tuple(kinds)}")
        views, masks = self.views(path)
        if set(kinds) == {"pooled"}:
            return {"pooled": self.outputs(views, masks, "pooled").mean(0)}
        found = token_features(self.outputs(views, masks, "tokens").mean(0), views.shape[1])
        return {kind: found[kind] for kind in kinds}
