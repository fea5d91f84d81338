"""Datasets: ``VideoFolder`` (``root/<class>/<video>``), ``VideoList`` (annotation files) and the collate.

A sample is a dict: ``video`` float ``t c S S``, ``mask`` bool ``t`` (True = a frame inside the video; a
video shorter than its clip repeats its last frame for the missing times, masked out),
``label`` (int, or a float multi-hot vector for multi-label data), ``index`` (the video), ``view`` (which
clip x crop of it), ``path``. In testing every video gives ``num_clips * num_crops`` items, one per view;
evaluation averages the logits of the views of each ``index``.

A file that can't be decoded never stops an epoch: with ``on_error="skip"`` (default) the item becomes
``{"error": ..., "path": ...}``, a warning names the file, and ``collate`` drops it and lists it in the batch's
``bad`` field, so the training loop can report every bad file at the end of the epoch. ``on_error="raise"``
raises instead. A file that decodes only partly (cut short, broken data) is used with the frames past the break
masked out, and is reported too: a warning, the sample's ``partial`` reason, and the batch's ``bad`` field.
Only ``DecodeError`` counts as a bad file: any other exception is a bug, and surfaces.
"""

from __future__ import annotations

import csv
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..errors import UserError
from .augment import ClipAugment, TrainTransform
from .decode import DECODERS, IMAGE_EXTENSIONS, MAX_PIXELS, VIDEO_EXTENSIONS, DecodeError, natural_key
from .readers import open_video
from .sampling import dense_clip_times, segment_times
from .transforms import OFFICIAL_MEAN, OFFICIAL_STD, EvalTransform

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipSpec:
    """How clips are cut and shaped (one object shared by datasets, eval and predict).

    ``sampling="dense"``: ``num_frames`` frames every ``sampling_rate`` frames at ``fps`` (Kinetics);
    ``"segment"``: one frame from each of ``num_frames`` segments (Something-Something).
    """

    num_frames: int = 8
    sampling: str = "dense"
    sampling_rate: int = 32
    fps: float = 30.0
    crop_size: int = 224
    scale: tuple = (256, 320)  # training short-side jitter
    short_side: int | None = None  # testing short side (default: crop_size)
    flip: bool = True
    num_clips: int = 1  # test views in time
    num_crops: int = 1  # test views in space: 1 (centre) or 3 (the paper's protocol)
    mean: tuple = OFFICIAL_MEAN
    std: tuple = OFFICIAL_STD
    frames_fps: float = 30.0  # the rate frame folders are shown at
    # training augmentation (Kornia, one draw per clip), after the jitter and crop: RandAugment n ops at magnitude m
    # (n 0: off), RandomErasing's probability; in the loader, or (False) on the training device per batch
    randaugment_n: int = 0
    randaugment_m: int = 9
    erase_prob: float = 0.0
    augment_in_loader: bool = True
    max_pixels: int = MAX_PIXELS  # a frame larger than this (width x height) is a DecodeError, before it is decoded
    decoder: str = "pyav"  # a video file's decoder: pyav | torchcodec (optional; see decode_torchcodec)

    @classmethod
    def from_config(
        cls,
        cfg,
        *,
        clips: int = 1,
        crops: int = 1,
        sampling: str | None = None,
        sampling_rate: int | None = None,
        fps: float | None = None,
    ) -> ClipSpec:
        """The test views a model takes: its config's frames, image size (the crop), mean/std and sampling protocol,
        with ``clips`` x ``crops`` views; ``sampling``, ``sampling_rate`` and ``fps`` replace the protocol's where
        given. ``cfg``: a ``TimeSformerConfig``, or anything with its fields (data never imports the model)."""
        return cls(
            num_frames=cfg.num_frames,
            sampling=sampling or cfg.sampling,
            sampling_rate=sampling_rate or cfg.sampling_rate,
            fps=fps or cfg.fps,
            crop_size=cfg.image_size,
            num_clips=clips,
            num_crops=crops,
            mean=tuple(cfg.mean),
            std=tuple(cfg.std),
        )

    def __post_init__(self):
        if self.sampling not in ("dense", "segment"):
            raise UserError(f"sampling must be 'dense' or 'segment'; got {self.sampling!r}")
        if self.max_pixels < 1:
            raise UserError(f"max_pixels must be a positive pixel count; got {self.max_pixels}")
        if self.decoder not in DECODERS:
            raise UserError(f"decoder must be one of {', '.join(DECODERS)}; got {self.decoder!r}")

    def open(self, path, *, train: bool, deadline: float | None = None):
        """A reader for ``path`` (``open_video``) that decodes frames no larger than this spec's clips need: short
        side scaled down to the largest training jitter, or to the test short side; frames over ``max_pixels``
        refused; decoding past ``deadline`` (``time.monotonic()`` seconds) a ``DecodeTimeout``."""
        return open_video(
            path,
            frames_fps=self.frames_fps,
            short_side=self.decode_side(train),
            max_pixels=self.max_pixels,
            deadline=deadline,
            decoder=self.decoder,
        )

    def clip_augment(self) -> ClipAugment:
        """The per-clip augmentation this spec asks for (flip, RandAugment, erasing), wherever it runs."""
        n, m = self.randaugment_n, self.randaugment_m
        return ClipAugment(flip=self.flip, randaugment_n=n, randaugment_m=m, erase_prob=self.erase_prob)

    def decode_side(self, train: bool) -> int:
        """The short side frames are decoded to: the largest training jitter, or the test short side."""
        return self.scale[1] if train else (self.short_side or self.crop_size)

    def times(self, duration: float, *, train: bool, clip_index: int = 0, generator=None) -> torch.Tensor:
        if self.sampling == "segment":
            return segment_times(duration, num_segments=self.num_frames, train=train, generator=generator)
        return dense_clip_times(
            duration,
            num_frames=self.num_frames,
            sampling_rate=self.sampling_rate,
            fps=self.fps,
            train=train,
            clip_index=clip_index,
            num_clips=self.num_clips,
            generator=generator,
        )


class VideoDataset(Dataset):
    """Items ``(path, target)`` with a class list; see the module docstring for samples and errors.

    Args:
        items: ``(path, label)`` pairs; label an int, or a tuple of ints for multi-label data.
        classes: class names, index -> name.
        train: random clips and augmentation; else deterministic test views.
        seed: with ``set_epoch``, makes every item's randomness reproducible in any worker.
    """

    def __init__(
        self,
        items: list,
        classes: list[str],
        *,
        spec: ClipSpec = ClipSpec(),
        train: bool = True,
        on_error: str = "skip",
        seed: int = 0,
    ):
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise'; got {on_error!r}")
        self.items, self.classes, self.spec, self.train = list(items), list(classes), spec, train
        self.on_error, self.seed, self.epoch = on_error, seed, 0
        self.multi_label = any(isinstance(label, tuple) for _, label in self.items)
        self.views = 1 if train else spec.num_clips * spec.num_crops
        if train:
            augment = spec.clip_augment() if spec.augment_in_loader else None
            self.train_tf = TrainTransform(
                crop_size=spec.crop_size, scale=spec.scale, augment=augment or None, mean=spec.mean, std=spec.std
            )
        self.eval_tf = EvalTransform(
            crop_size=spec.crop_size, short_side=spec.short_side, num_crops=spec.num_crops, mean=spec.mean, std=spec.std
        )

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.items) * self.views

    def target(self, label) -> torch.Tensor | int:
        if not self.multi_label:
            return label
        hot = torch.zeros(self.num_classes)
        hot[list(label if isinstance(label, tuple) else (label,))] = 1.0
        return hot

    def __getitem__(self, i: int) -> dict:
        video_index, view = divmod(i, self.views)
        path, label = self.items[video_index]
        try:
            generator = torch.Generator().manual_seed(hash((self.seed, self.epoch, i)) & 0x7FFF_FFFF_FFFF)
            clip_index, crop_index = divmod(view, self.spec.num_crops)
            with self.spec.open(path, train=self.train) as reader:
                times = self.spec.times(reader.duration, train=self.train, clip_index=clip_index, generator=generator)
                frames, valid = reader.frames_at(times)
                partial = reader.partial
        except DecodeError as err:
            if self.on_error == "raise":
                raise
            warnings.warn(f"skipping {path}: {err}", stacklevel=2)
            return {"error": str(err), "path": str(path), "index": video_index}
        if partial:
            if self.on_error == "raise":
                raise DecodeError(f"{path}: partial: {partial}")
            warnings.warn(f"{path}: partial: {partial}; the frames after it are masked out", stacklevel=2)
        video = self.train_tf(frames, generator) if self.train else self.eval_tf.view(frames, crop_index)
        # frames asked for past the end of a short video repeat its last frame and are masked out (mask False):
        # the model sees the real length, and every row keeps its first frame
        sample = {
            "video": video,
            "mask": valid,
            "label": self.target(label),
            "index": video_index,
            "view": view,
            "path": str(path),
        }
        return {**sample, "partial": partial} if partial else sample


_PARTIAL = "partial: "  # how a partly decoded file's reason starts in a batch's ``bad`` list


def bad_files_report(bad: list) -> dict:
    """What reports say of a run's ``bad`` ``(path, error)`` pairs: ``bad_files`` (each path once), ``bad_reasons``
    (path -> its first error: why it was skipped or cut), and ``partial_files`` -- those decoded only partly, used with
    the frames past the break masked -- when any."""
    reasons = {}
    for path, error in bad:
        reasons.setdefault(path, error)
    report = {"bad_files": sorted(reasons), "bad_reasons": dict(sorted(reasons.items()))}
    partial = sorted({path for path, error in bad if error.startswith(_PARTIAL)})
    return {**report, "partial_files": partial} if partial else report


def collate(samples: list[dict]) -> dict:
    """Stack good samples (``video: b t c S S``, ``mask: b t``, ``label: b`` or ``b classes``; ``complete``: every
    frame is real); list the bad ones (and the partial ones, which stay in the batch) in ``bad`` as
    ``(path, error)``. A batch may end up empty (``video`` is None)."""
    good = [s for s in samples if "error" not in s]
    batch = {
        "bad": [(s["path"], s["error"]) for s in samples if "error" in s]
        + [(s["path"], f"{_PARTIAL}{s['partial']}") for s in good if s.get("partial")]
    }
    if not good:
        return {**batch, "video": None}
    batch["video"] = torch.stack([s["video"] for s in good])
    batch["mask"] = torch.stack([s["mask"] for s in good])
    batch["complete"] = bool(batch["mask"].all())  # read here, on the CPU: no mask to pass, no device sync
    labels = [s["label"] for s in good]
    batch["label"] = torch.stack(labels) if isinstance(labels[0], torch.Tensor) else torch.tensor(labels)
    batch["index"] = torch.tensor([s["index"] for s in good])
    batch["view"] = torch.tensor([s.get("view", 0) for s in good])
    batch["path"] = [s["path"] for s in good]
    return batch


# --- folder and list layouts ----------------------------------------------------------------------------
def _is_video(p: Path) -> bool:
    if p.is_dir():  # a folder of extracted frames
        return any(q.suffix.lower() in IMAGE_EXTENSIONS for q in p.iterdir())
    return p.suffix.lower() in VIDEO_EXTENSIONS


class VideoFolder(VideoDataset):
    """``root/<class>/<video file or frame folder>``.

    Args:
        classes: the class order to label by name (a checkpoint's ``config.labels``): a folder's videos get the
            index of its name there; a folder with videos whose name is not among them is an error. Default: the
            sub-folder names, sorted.
    """

    def __init__(self, root: str | os.PathLike, *, classes: list[str] | None = None, **kwargs):
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"{root}: not a folder; expected root/<class>/<video>")
        folders = sorted((d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=natural_key)
        videos = {
            name: [p for p in sorted((root / name).iterdir(), key=lambda p: natural_key(p.name)) if _is_video(p)]
            for name in folders
        }
        if classes is None:
            classes = folders
        classes = list(classes)
        index = {name: i for i, name in enumerate(classes)}
        unknown = [name for name in folders if videos[name] and name not in index]
        if unknown:
            raise UserError(
                f"{root}: class folder {unknown[0]!r} ({len(videos[unknown[0]])} videos) is not among "
                f"the {len(classes)} classes {classes[:12]}{' ...' if len(classes) > 12 else ''}"
            )
        items = [(p, index[name]) for name in folders if name in index for p in videos[name]]
        if not items:
            raise UserError(
                f"{root}: no videos found; expected root/<class>/<video> with one of "
                f"{', '.join(VIDEO_EXTENSIONS)} or folders of frames"
            )
        super().__init__(items, classes, **kwargs)


KINETICS_HEADER = ["label", "youtube_id", "time_start", "time_end", "split"]


def read_list(
    file: str | os.PathLike, root: str | os.PathLike | None = None, classes: list[str] | None = None
) -> tuple[list, list[str]]:
    """Parse an annotation list into ``(items, classes)``.

    Formats: ``path label`` lines (official/mmaction2; ``label`` an index, or ``3,17`` for multi-label); CSV with a
    ``path,label`` header (label an index or a class name); the Kinetics CSV (``label,youtube_id,time_start,
    time_end,split``; files ``<youtube_id>_<start:06d>_<end:06d>.mp4`` under ``root/<label>/`` or ``root/``).
    Paths are relative to ``root`` (default: the list's folder). A malformed line or an unknown label raises
    ``UserError`` naming the file and line number.
    """
    file = Path(file)
    raw = _list_rows(file, root, labelled=True)

    numeric = all(lab.isdigit() for _, _, labs in raw for lab in labs)
    if classes is None:
        if numeric:
            top = max(int(lab) for _, _, labs in raw for lab in labs)
            classes = [str(i) for i in range(top + 1)]
        else:
            classes = sorted({lab for _, _, labs in raw for lab in labs}, key=natural_key)
    index = {name: i for i, name in enumerate(classes)}
    items = []
    for n, path, labs in raw:
        ids = []
        for lab in labs:
            if lab.isdigit() and (numeric or lab not in index):
                if int(lab) >= len(classes):
                    raise UserError(f"{file}:{n}: label {lab} is out of range for {len(classes)} classes")
                ids.append(int(lab))
            elif lab in index:
                ids.append(index[lab])
            else:
                raise UserError(
                    f"{file}:{n}: unknown label {lab!r}; known: {classes[:10]}" + (" ..." if len(classes) > 10 else "")
                )
        items.append((path, tuple(ids) if len(labs) > 1 else ids[0]))
    return items, classes


def list_videos(file: str | os.PathLike, root: str | os.PathLike | None = None) -> list[tuple[Path, str | None]]:
    """The videos an inference list names, in its order: ``[(path, label text or None)]``.

    Reads what ``read_list`` reads, and also plain lists of one path per line (no label). A line is one path when
    it names a file under ``root`` or ends in a video extension; otherwise ``<path> <label>``. Labels are kept as
    written, not checked. ``UserError`` names the file and line of a malformed line."""
    return [(path, ",".join(labs) if labs else None) for _, path, labs in _list_rows(Path(file), root, labelled=False)]


def _list_rows(file: Path, root, *, labelled: bool) -> list[tuple[int, Path, list[str]]]:
    """``(line number, path, [label texts])`` for every entry of a list file (see ``read_list``); with
    ``labelled=False`` a plain line may be a path alone."""
    root = Path(root) if root is not None else file.parent
    try:
        lines = file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{file}: cannot read the list ({err})") from None
    header = [h.strip() for h in lines[0].split(",")] if lines else []
    if not labelled and header == ["path"]:
        return [(n, root / line.strip(), []) for n, line in enumerate(lines[1:], start=2) if line.strip()]
    raw = []  # (line number, path, [labels as strings])
    if header == KINETICS_HEADER:
        for n, row in enumerate(csv.reader(lines[1:]), start=2):
            if not row:
                continue
            if len(row) != 5:
                raise UserError(f"{file}:{n}: expected 5 fields {KINETICS_HEADER}; got {len(row)}: {row}")
            label, yid, start, end = row[0], row[1], row[2], row[3]
            try:
                name = f"{yid}_{int(float(start)):06d}_{int(float(end)):06d}.mp4"
            except ValueError:
                raise UserError(f"{file}:{n}: time_start/time_end must be numbers; got {start!r}, {end!r}") from None
            path = root / label / name if (root / label / name).exists() else root / name
            raw.append((n, path, [label]))
    elif header[:2] == ["path", "label"]:
        for n, row in enumerate(csv.reader(lines[1:]), start=2):
            if not row:
                continue
            if len(row) < 2:
                raise UserError(f"{file}:{n}: expected path,label; got {row}")
            raw.append((n, root / row[0], [p.strip() for p in row[1].split(";" if ";" in row[1] else "|")]))
    else:
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            parts = line.rsplit(maxsplit=1)
            if not labelled and (
                len(parts) == 1
                or (root / line.strip()).exists()
                or Path(line.strip()).suffix.lower() in VIDEO_EXTENSIONS
            ):
                raw.append((n, root / line.strip(), []))
                continue
            if len(parts) != 2:
                raise UserError(f"{file}:{n}: expected '<path> <label>'; got {line!r}")
            raw.append((n, root / parts[0], parts[1].split(",")))
    if not raw:
        raise UserError(f"{file}: the list holds no videos")
    return raw


class VideoList(VideoDataset):
    """Videos named by an annotation list (see ``read_list``). Paths that don't exist are treated like
    undecodable files: skipped with a warning and reported, or raised with ``on_error="raise"``."""

    def __init__(
        self, file: str | os.PathLike, root: str | os.PathLike | None = None, classes: list[str] | None = None, **kwargs
    ):
        items, classes = read_list(file, root, classes)
        super().__init__(items, classes, **kwargs)
