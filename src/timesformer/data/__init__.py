"""Video data: decoding (PyAV), clip sampling, transforms, datasets and the synthetic motion set.

Imports torch and, when decoding, PyAV; never ``timesformer.model``.
"""

from .augment import BatchMix, ClipAugment, TrainTransform, soft_targets
from .datasets import ClipSpec, VideoDataset, VideoFolder, VideoList, bad_files_report, collate, list_videos, read_list
from .decode import DecodeError, DecodeTimeout, FrameFolderReader, VideoReader
from .formats import FORMATS, read_format
from .readers import open_video
from .sampling import clip_start_times, dense_clip_times, segment_times
from .synthetic import CLASSES, REVERSED_PAIRS, SyntheticMotion, write_synthetic
from .transforms import EvalTransform, center_crop, normalize, resize_short_side, three_crop

__all__ = [
    "BatchMix",
    "ClipAugment",
    "CLASSES",
    "REVERSED_PAIRS",
    "ClipSpec",
    "DecodeError",
    "DecodeTimeout",
    "EvalTransform",
    "FORMATS",
    "FrameFolderReader",
    "SyntheticMotion",
    "TrainTransform",
    "VideoDataset",
    "VideoFolder",
    "VideoList",
    "VideoReader",
    "bad_files_report",
    "center_crop",
    "clip_start_times",
    "collate",
    "dense_clip_times",
    "list_videos",
    "normalize",
    "open_video",
    "read_format",
    "read_list",
    "resize_short_side",
    "segment_times",
    "soft_targets",
    "three_crop",
    "write_synthetic",
]
