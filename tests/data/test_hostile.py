"""Valid files built to cost the most (issue 21): decoding costs what the clip needs, a header's claims are hints.

Memory is measured in a fresh subprocess reading its own peak RSS (``VmHWM``) before and after the work, after a
warm-up decode of a small video on the same path, so imports and allocator pools are not counted.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch

from timesformer.data import (
    ClipSpec,
    DecodeError,
    DecodeTimeout,
    VideoDataset,
    bad_files_report,
    collate,
    open_video,
)
from timesformer.data.sampling import clip_start_times, window_count
from timesformer.errors import UserError

from ..engine.helpers import ROOT, metrics, tiny_run
from .hostile import (
    write_claimed_duration,
    write_growing_frames,
    write_huge_frames,
    write_overflowing_duration,
    write_thin_frames,
    write_without_keyframe,
)
from .videos import index_frame, write_video

MIB = 2**20
BOUND_MIB = 300  # the bound on what one 8x224 clip of the 8000x8000 file may add to peak RSS


@pytest.fixture(scope="module")
def huge(tmp_path_factory):
    """Two 8000x8000 H.264 frames (about 230 KiB; 7.7 GiB of RSS before this issue), and a small normal video."""
    root = tmp_path_factory.mktemp("hostile")
    write_video(root / "small.mp4", 30, size=64)
    return write_huge_frames(root / "huge.mp4", 8000), root / "small.mp4"


# Each path a user hits, as a script: ``run(path)`` decodes one clip, ``setup`` runs before the warm-up.
PATHS = {
    "dataset-train": (
        "from timesformer.data.datasets import VideoDataset\n"
        "run = lambda p: VideoDataset([(p, 0)], ['a'], spec=ClipSpec(), train=True)[0]['video'].shape"
    ),
    "dataset-eval": (
        "from timesformer.data.datasets import VideoDataset\n"
        "run = lambda p: VideoDataset([(p, 0)], ['a'], spec=ClipSpec(num_crops=3), train=False)[0]['video'].shape"
    ),
    "server": (
        "from fastapi.testclient import TestClient\n"
        "from timesformer.serve import create_app\n"
        "from timesformer.inference import Predictor\n"
        "from tests.conftest import labelled_tiny_model\n"
        "model = labelled_tiny_model()\n"
        "client = TestClient(create_app(Predictor(model), warmup=False)).__enter__()\n"
        "def run(p):\n"
        "    with open(p, 'rb') as f:\n"
        "        r = client.post('/v1/predict', files={'file': ('v.mp4', f)})\n"
        "    assert r.status_code == 200, r.text\n"
        "    return r.json()['labels'][:1]"
    ),
}

SCRIPT = """
import json, sys, warnings
warnings.simplefilter("ignore")
from timesformer.data import ClipSpec

def peak():
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM"))

{setup}
run(sys.argv[2])  # warm-up: imports, the decoder's and the allocator's pools
before = peak()
out = run(sys.argv[1])
print(json.dumps({{"added": peak() - before, "out": str(out)}}))
"""


def _added_peak(setup: str, video, small) -> dict:
    """``SCRIPT`` with ``setup`` in a fresh process: ``{"added": peak RSS bytes the work added, "out": its result}``."""
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(setup=setup), str(video), str(small)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("path_name", list(PATHS))
def test_a_clip_of_8000x8000_frames_adds_under_300_mib_of_peak_rss(huge, path_name):
    video, small = huge
    found = _added_peak(PATHS[path_name], video, small)
    assert found["added"] < BOUND_MIB * MIB, f"{path_name}: +{found['added'] / MIB:.0f} MiB"
    if path_name == "dataset-train":
        assert found["out"] == "torch.Size([8, 3, 224, 224])"


def test_frames_are_scaled_in_the_decoder_to_the_short_side_the_clip_needs(tmp_path):
    write_video(tmp_path / "v.mp4", 4, size=128)
    with open_video(tmp_path / "v.mp4", short_side=48) as reader:
        frames, _ = reader.frames_at([0.0, 0.1])
    assert frames.shape == (2, 3, 48, 48)
    with open_video(tmp_path / "v.mp4", short_side=256) as reader:  # never scaled up
        assert reader.frames_at([0.0])[0].shape == (1, 3, 128, 128)
    # the eval clip is unchanged by its own resize: the decoder gave it exactly the short side
    spec = ClipSpec(num_frames=2, crop_size=48, sampling="segment")
    with spec.open(tmp_path / "v.mp4", train=False) as reader:
        assert reader.frames_at([0.0])[0].shape[-2:] == (48, 48)
    with spec.open(tmp_path / "v.mp4", train=True) as reader:  # training: the largest jitter, 320 > 128: as is
        assert reader.frames_at([0.0])[0].shape[-2:] == (128, 128)


def test_frames_over_max_pixels_are_refused_when_opened_naming_size_and_limit(tmp_path):
    import av

    write_huge_frames(tmp_path / "big.mp4", 1280, num_frames=1)
    folder = tmp_path / "frames"
    folder.mkdir()
    av.VideoFrame.from_ndarray(index_frame(0, 1280), format="rgb24").to_image().save(folder / "0.png")
    for path in (tmp_path / "big.mp4", folder):
        with pytest.raises(DecodeError, match=r"1280x1280 \(1,638,400 pixels\) are over the limit of 1,000,000"):
            with open_video(path, max_pixels=1_000_000) as reader:
                reader.frames_at([0.0])
    spec = ClipSpec(num_frames=2, crop_size=32, sampling="segment", max_pixels=1_000_000)  # skipped, with a reason
    sample = VideoDataset([(tmp_path / "big.mp4", 0)], ["a"], spec=spec, train=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = collate([sample[0]])
    report = bad_files_report(batch["bad"])
    assert report["bad_files"] == [str(tmp_path / "big.mp4")]
    assert "over the limit" in report["bad_reasons"][str(tmp_path / "big.mp4")]
    with open_video(tmp_path / "big.mp4", max_pixels=1280 * 1280) as reader:  # at the limit: decodes
        assert reader.frames_at([0.0])[0].shape == (1, 3, 1280, 1280)


def test_the_stream_source_refuses_frames_over_max_pixels(tmp_path):
    from timesformer.inference.stream import frames_from

    write_huge_frames(tmp_path / "big.mp4", 1280, num_frames=1)
    with pytest.raises(DecodeError, match="over the limit"):
        next(frames_from(str(tmp_path / "big.mp4"), max_pixels=1_000_000))
    _, frame = next(frames_from(str(tmp_path / "big.mp4"), short_side=64))
    assert frame.shape == (3, 64, 64)


@pytest.mark.slow
def test_a_16000x16000_frame_is_refused_at_the_default_limit_for_a_few_mib(tmp_path):
    """The issue's 752 KiB file that passed 12 GiB: refused before its frame is allocated."""
    video = write_huge_frames(tmp_path / "huge16k.mp4", 16000, num_frames=1)
    small = tmp_path / "small.mp4"
    write_video(small, 30, size=64)
    setup = (
        "from timesformer.data import DecodeError, open_video\n"
        "def run(p):\n"
        "    try:\n"
        "        with open_video(p) as r:\n"
        "            return r.frames_at([0.0])[0].shape\n"
        "    except DecodeError as err:\n"
        "        return err"
    )
    found = _added_peak(setup, video, small)
    assert "16000x16000 (256,000,000 pixels) are over the limit of 67,108,864" in found["out"]
    assert found["added"] < 150 * MIB


def test_a_negative_claimed_duration_is_refused_and_nan_or_infinite_ones_are_unknown(tmp_path):
    with pytest.raises(DecodeError, match="claims a duration of -10000000.0 s"):
        open_video(write_claimed_duration(tmp_path / "neg.mkv", -1e7))
    for claim in (math.nan, math.inf):  # FFmpeg drops these: the duration is unknown (0), never NaN or inf
        with open_video(write_claimed_duration(tmp_path / f"{claim}.mkv", claim)) as reader:
            assert reader.duration == 0.0
            frames, valid = reader.frames_at([0.0, 0.04])
            assert valid.tolist() == [True, True]


def test_a_duration_claimed_past_the_data_is_capped_by_what_decodes(tmp_path):
    """A 2-frame MKV claiming 1e6 s: the clip's times spread over the claim, two frames decode, the rest is masked
    and the file reported partial, as a truncated file is."""
    path = write_claimed_duration(tmp_path / "claims.mkv", 1e6)
    spec = ClipSpec(num_frames=8, crop_size=32, sampling="segment")
    with spec.open(path, train=False) as reader:
        frames, valid = reader.frames_at(spec.times(reader.duration, train=False))
        assert reader.frames_decoded <= 4 and "decoding stopped at 0.07 s of 1000000.00 s" in reader.partial
    assert frames.shape == (8, 3, 32, 32) and not valid.any()  # every time lies past the two frames


def test_timeline_windows_are_counted_before_any_is_made():
    from timesformer.inference.predict import Predictor

    for duration, window, stride in [(10.0, 4.0, 3.0), (10.5, 4.0, 3.0), (2.0, 4.0, 1.0), (100.0, 0.7, 0.3)]:
        assert window_count(duration, window=window, stride=stride) == len(
            clip_start_times(duration, window=window, stride=stride)
        )
    assert window_count(1e12, window=0.01, stride=0.01) == 100_000_000_000_000
    predictor = Predictor.__new__(Predictor)  # timeline_windows needs nothing of the model
    with pytest.raises(UserError, match="makes 100000000000000 windows of this 1000000000000 s video; at most 1000"):
        predictor.timeline_windows(1e12, window=0.01, stride=0.01, max_windows=1000)
    assert len(predictor.timeline_windows(10.5, window=4.0, stride=3.0, max_windows=4)) == 4


def test_training_on_huge_frames_stays_bounded_and_reports_a_file_over_the_limit(huge, tmp_path, monkeypatch):
    """One epoch with a DataLoader worker: the 8000x8000 file trains within the bound, a file over
    ``data.max_pixels`` is skipped and listed in ``bad_files`` with its reason."""
    from timesformer.engine.loop import fit

    video, small = huge
    root = tmp_path / "data"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for k in range(2):
            (root / cls / f"{k}.mp4").write_bytes(small.read_bytes())
    (root / "a" / "huge.mp4").write_bytes(video.read_bytes())
    over = write_huge_frames(root / "b" / "over.mp4", 8008, num_frames=1)
    peaks = tmp_path / "peaks"
    peaks.mkdir()
    real = VideoDataset.__getitem__

    def measured(self, i):  # runs in the worker: its peak RSS before and after each item
        start = _peak()
        item = real(self, i)
        with open(peaks / f"{os.getpid()}.txt", "a") as out:
            out.write(f"{start} {_peak()} {item['path']}\n")
        return item

    monkeypatch.setattr(VideoDataset, "__getitem__", measured)
    cfg = tiny_run(
        tmp_path,
        model_args=dict(image_size=224, patch_size=32),  # 8x224 clips, as the bound is stated for
        data=dict(
            kind="folder",
            train=str(root),
            num_frames=8,
            sampling="segment",
            crop_size=224,
            scale=[256, 320],
            workers=1,
            max_pixels=8000 * 8000,  # huge.mp4 is at the limit, over.mp4 past it
        ),
        optim=dict(batch_size=6, epochs=1),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(cfg)
    epoch = [r for r in metrics(tmp_path / "run") if "train_loss" in r][0]
    assert epoch["bad_files"] == [str(over)], epoch
    assert "8008x8008 (64,128,064 pixels) are over the limit of 64,000,000" in epoch["bad_reasons"][str(over)]
    assert torch.isfinite(torch.tensor(epoch["train_loss"]))
    (log,) = list(peaks.iterdir())  # one worker
    rows = [line.split() for line in log.read_text().splitlines()]
    assert len(rows) == 6 and int(log.stem) != os.getpid()
    added = max(int(after) for _, after, _ in rows) - int(rows[0][0])
    assert added < BOUND_MIB * MIB, f"the worker's peak RSS rose {added / MIB:.0f} MiB"


def _peak() -> int:
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM"))


def test_closing_a_huge_video_hands_its_frames_back_to_the_os(huge):
    """glibc keeps what the decoder's threads freed (60 MiB and more of a server's RSS after the 8000x8000 file):
    ``close`` drops the decoder and trims the heap."""
    video, small = huge
    script = (
        "import sys, threading\n"
        "from timesformer.data import open_video\n"
        "def rss():\n"
        "    return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmRSS'))\n"
        "def clip(p):\n"
        "    with open_video(p, short_side=224) as r:\n"
        "        r.frames_at([0.0, 0.04])\n"
        "clip(sys.argv[2])\n"
        "before = rss()\n"
        "for _ in range(2):  # as a server's decoding threads do\n"
        "    t = threading.Thread(target=clip, args=(sys.argv[1],))\n"
        "    t.start()\n"
        "    t.join()\n"
        "print(rss() - before)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(video), str(small)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    kept = int(proc.stdout.strip().splitlines()[-1])
    assert kept < 30 * MIB, f"RSS kept after closing: {kept / MIB:.0f} MiB"


def test_thin_frames_are_refused_before_a_resize_scales_their_long_side_up(tmp_path):
    """16 x 2000 frames (1.6 KiB): a clip's 224 short side made them 224 x 28000, 600 MiB to 1.2 GiB per clip."""
    from timesformer.inference.stream import frames_from

    thin = write_thin_frames(tmp_path / "thin.mp4", 16, 2000)
    with pytest.raises(DecodeError, match=r"frames of 16x2000 have an aspect ratio of 125:1; at most 10:1"):
        open_video(thin)
    with pytest.raises(DecodeError, match="aspect ratio"):
        next(frames_from(str(thin)))
    with open_video(write_thin_frames(tmp_path / "wide.mp4", 640, 64)) as reader:  # 10:1 decodes
        assert reader.frames_at([0.0])[0].shape == (1, 3, 64, 640)


def test_a_duration_overflowing_the_stream_clock_is_partial_not_a_crash(tmp_path):
    """A 1 ns timecode scale and a 9e12 s claim: seeking there overflowed int64 (an OverflowError that killed a
    DataLoader worker and made the server answer 500)."""
    path = write_overflowing_duration(tmp_path / "overflow.mkv", 9e12)
    spec = ClipSpec(num_frames=8, crop_size=32, sampling="segment")
    sample = VideoDataset([(path, 0)], ["a"], spec=spec, train=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        item = sample[0]
    assert item["partial"].startswith("decoding stopped at 0.03 s of 9000000000000.00 s")
    assert not item["mask"].any()


def test_frames_that_grow_mid_stream_stay_within_the_bound(tmp_path):
    """An MPEG-TS that starts at 64x64 and switches to 8000x8000 took +728 MiB with frame threads (1.8 GiB with 16):
    frame threads cap growth at their share of the budget, so the big frames are refused here (2 cores: 59.6
    megapixels a thread), and the file is partial."""
    path = write_growing_frames(tmp_path / "grows.ts", 64, 8000)
    small = tmp_path / "small.mp4"
    write_video(small, 30, size=64)
    setup = (
        "from timesformer.data import DecodeError, open_video\n"
        "def run(p):\n"
        "    try:\n"
        "        with open_video(p, short_side=224) as r:\n"
        "            frames, valid = r.frames_at([0.0, 0.5, 1.0, 1.04])\n"
        "            return [valid.tolist(), r.partial]\n"
        "    except DecodeError as err:  # one core: a thread's share admits the big frames; the clip is refused\n"
        "        return ['bad', str(err)]"
    )
    found = _added_peak(setup, path, small)
    assert found["added"] < BOUND_MIB * MIB, f"+{found['added'] / MIB:.0f} MiB"
    if len(os.sched_getaffinity(0)) >= 2:  # the cores the decoder counts threads by
        assert found["out"].startswith("[[True, True, True, False], ") and "decoding stopped at 1.00 s" in found["out"]


def test_a_stream_that_switches_resolution_decodes_whole(tmp_path):
    """A recording whose frames go from 360x360 to 720x720 (a resized window, concatenated segments): both scale to
    the clip's size, so the clip holds both, and nothing is partial."""
    path = write_growing_frames(tmp_path / "switch.ts", 360, 720, num_large=30)
    with open_video(path, short_side=224) as reader:
        frames, valid = reader.frames_at([0.0, 0.5, 1.2, 1.9])
        assert frames.shape == (4, 3, 224, 224) and valid.all() and reader.partial is None


def test_decoding_past_its_deadline_raises_decode_timeout(tmp_path):
    import time

    write_video(tmp_path / "v.mp4", 90, size=64)
    with open_video(tmp_path / "v.mp4", deadline=time.monotonic() - 1) as reader:
        with pytest.raises(DecodeTimeout, match="decoding passed its deadline"):
            reader.frames_at([0.0, 2.9])
        assert reader.frames_decoded == 0  # checked per packet, before decoding it
    # packets that decode to no frame (the keyframe dropped: ~16 s per MiB at 1080p) still meet the deadline
    keyless = write_without_keyframe(tmp_path / "keyless.mp4", 64, 60)
    with open_video(keyless, deadline=time.monotonic() - 1) as reader:
        with pytest.raises(DecodeTimeout):
            reader.frames_at([0.0, 1.9])
    assert not issubclass(DecodeTimeout, DecodeError)  # a request out of time is not a bad file
    with open_video(tmp_path / "v.mp4", deadline=time.monotonic() + 60) as reader:
        assert reader.frames_at([0.0, 2.9])[1].all()
