"""timesformer stream: predictions on frames as they arrive, from a file, a stdin pipe and with real-time pacing."""

import json
import subprocess
import sys
import time

import pytest
import torch

import timesformer as tf
from timesformer.inference import Predictor

from ..conftest import labelled_tiny_model
from ..data.videos import write_video

pytest.importorskip("av")


@pytest.fixture(scope="module")
def model():
    return labelled_tiny_model()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    write_video(root / "a.mp4", 60, fps=30, size=64)  # 2 s
    write_video(root / "a.ts", 60, fps=30, size=64)  # MPEG-TS: what ffmpeg pipes
    return root


def test_a_file_streams_predictions_whose_times_follow_the_video_with_predicts_logits(model, clip):
    """Each prediction is ``predict``'s on the window ending now: ``Predictor.views(path, start, window=span)``
    decodes the same frames, so the logits are equal."""
    predictor = Predictor(model, sampling_rate=3)  # 4 frames in 12 at 30 fps: a 0.4 s window
    out = list(predictor.stream(clip / "a.mp4", every=8, topk=2, warmup="full"))  # frames scaled as views scales
    # the first window is complete at frame 11 (0.367 s); a prediction every 8th frame from then on
    assert [o["time"] for o in out] == pytest.approx([k / 30 for k in (15, 23, 31, 39, 47, 55)], abs=1e-3)
    for o in out:  # the official placement within the clip: frames 0, 3, 7, 11 of 12, the last one now
        assert o["frames"] == pytest.approx([o["time"] - (11 - k) / 30 for k in (0, 3, 7, 11)], abs=1e-3)
        views, masks = predictor.views(clip / "a.mp4", start=o["window"][0], window=0.4)
        torch.testing.assert_close(o["logits"], predictor.clip_logits(views, masks)[0], atol=1e-5, rtol=1e-5)
    smoothed = list(predictor.stream(clip / "a.mp4", every=8, smooth=3, topk=3, warmup="full"))
    probs = [torch.tensor([t["prob"] for t in sorted(o["top"], key=lambda t: t["index"])]) for o in smoothed]
    raw = [o["logits"].softmax(-1) for o in out]
    torch.testing.assert_close(probs[2], torch.stack(raw[:3]).mean(0), atol=1e-6, rtol=0)


def test_a_stream_shorter_than_one_clip_gets_one_prediction_as_predict_gives(model, clip):
    predictor = Predictor(model)  # 4 frames in 128 at 30 fps: a 4.3 s window, longer than the 2 s video
    out = list(predictor.stream(clip / "a.mp4", warmup="full"))
    assert len(out) == 1 and out[0]["time"] == pytest.approx(59 / 30, abs=1e-3)  # made when the stream ended
    assert out[0]["frames"] == pytest.approx([0.0, 42 / 30, 84 / 30, 127 / 30], abs=1e-3)
    assert out[0]["coverage"] == 0.5  # 0 and 1.4 s seen, 2.8 and 4.23 s not
    torch.testing.assert_close(out[0]["logits"], predictor.logits(clip / "a.mp4"), atol=1e-5, rtol=1e-5)
    # masked warmup: one every 8 frames from the first, and the one at the end: the same as above
    masked = list(predictor.stream(clip / "a.mp4"))
    assert [o["time"] for o in masked] == pytest.approx([k / 30 for k in (7, 15, 23, 31, 39, 47, 55, 59)], abs=1e-3)
    assert [o["coverage"] for o in masked] == [0.25] * 5 + [0.5] * 3
    torch.testing.assert_close(masked[-1]["logits"], out[0]["logits"], atol=0, rtol=0)


def test_a_live_feed_predicts_from_its_first_frames_with_the_rest_masked(model, clip):
    """Before one window has arrived, each prediction is ``predict``'s on the window from the first frame with the
    times not yet reached masked; from the first full window on, the predictions are those of ``warmup="full"``."""
    predictor = Predictor(model, sampling_rate=3)  # frames at 0, 0.1, 0.233 and 0.367 s of a 0.4 s window
    out = list(predictor.stream(clip / "a.mp4", every=4, topk=2))
    early = [o for o in out if o["coverage"] < 1]
    assert [o["time"] for o in early] == pytest.approx([3 / 30, 7 / 30], abs=1e-3)  # the window is full at frame 11
    assert [o["coverage"] for o in early] == [0.5, 0.75]
    views, _ = predictor.views(clip / "a.mp4", start=0.0, window=0.4)
    for o in early:
        assert o["window"][0] == 0.0 and o["frames"] == pytest.approx([0.0, 0.1, 7 / 30, 11 / 30], abs=1e-3)
        masks = torch.tensor([[t <= o["time"] + 1e-6 for t in o["frames"]]])
        torch.testing.assert_close(o["logits"], predictor.clip_logits(views, masks)[0], atol=1e-5, rtol=1e-5)
    for smooth in (1, 3):  # smoothing, too, starts again at the first full window
        out = list(predictor.stream(clip / "a.mp4", every=4, topk=3, smooth=smooth))
        full = list(predictor.stream(clip / "a.mp4", every=4, topk=3, smooth=smooth, warmup="full"))
        later = out[len(early) :]
        assert [o["time"] for o in later] == [o["time"] for o in full] and len(full) == 13
        for a, b in zip(later, full):
            assert a["coverage"] == b["coverage"] == 1.0 and a["frames"] == b["frames"] and a["top"] == b["top"]
            torch.testing.assert_close(a["logits"], b["logits"], atol=0, rtol=0)


def test_stdin_pipe_from_the_command_line(model, clip, tmp_path):
    tf.save_pretrained(model, tmp_path / "ckpt")
    with open(clip / "a.ts", "rb") as stdin:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "timesformer",
                "stream",
                "--checkpoint",
                str(tmp_path / "ckpt"),
                "--source",
                "-",
                "--sampling-rate",
                "3",
                "--every",
                "8",
                "--json",
                "--topk",
                "2",
            ],
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 7 and set(lines[0]) == {"time", "top", "coverage", "latency_ms"}  # the first one masked
    assert [t["coverage"] for t in lines] == [0.75] + [1.0] * 6
    assert [t["time"] for t in lines] == sorted(t["time"] for t in lines)
    assert lines[0]["top"][0]["class"] in ("cat", "dog", "eel")


def test_realtime_paces_the_file_and_counts_the_windows_it_drops(model, clip):
    predictor = Predictor(model, sampling_rate=3)
    slow = predictor.model

    def model_taking_100ms(video, mask=None):
        time.sleep(0.1)
        return slow(video, mask)

    predictor.model = model_taking_100ms
    start = time.monotonic()
    out = list(predictor.stream(clip / "a.mp4", every=1, realtime=True))
    assert time.monotonic() - start >= 1.9  # 60 frames at 30 fps, played as if live
    assert 2 <= len(out) < 40 and out[-1]["dropped"] > 0  # 60 windows due, >= 0.1 s each: most dropped
    assert 54 <= len(out) + out[-1]["dropped"] <= 60  # (drops after the last prediction are not in it)
