"""The optional torchcodec decoder against PyAV's: the same times select the same frames (codecs, B-frames, VFR,
frames scaled down), the damaged-file corpus gives the same outcomes, and a missing library is a clear error.

The parity tests skip, saying why, where torchcodec or FFmpeg's shared libraries are missing (``make test`` on a
fresh clone); the error-message tests run everywhere."""

import builtins
from fractions import Fraction

import numpy as np
import pytest
import torch

from timesformer.data import ClipSpec, DecodeError, VideoFolder, decode_torchcodec, open_video
from timesformer.data.decode import frame_at
from timesformer.errors import UserError

from .damaged import write_corpus
from .test_damaged import TIMES, decode_in_child
from .videos import index_frame, read_index, write_video

av = pytest.importorskip("av")


def _torchcodec_or_skip():
    decode_torchcodec._torchcodec.cache_clear()
    try:
        decode_torchcodec._torchcodec()
    except UserError as err:
        pytest.skip(f"torchcodec is not usable here: {err}")


@pytest.fixture
def torchcodec():
    _torchcodec_or_skip()


def _both(path, times, **limits):
    """``(frames, valid, partial)`` from each decoder."""
    out = []
    for decoder in ("pyav", "torchcodec"):
        with open_video(path, decoder=decoder, **limits) as reader:
            frames, valid = reader.frames_at(times)
            out.append((frames, valid, reader.partial))
    return out


@pytest.mark.parametrize(
    "codec,ext,options",
    [
        ("libx264", "mp4", {"crf": "18", "bf": "3"}),  # B-frames: decode order is not display order
        ("libx265", "mkv", {"crf": "18", "x265-params": "log-level=error"}),
        ("libvpx-vp9", "webm", None),
        ("mjpeg", "avi", None),
    ],
)
def test_the_same_times_select_the_same_frames(torchcodec, tmp_path, codec, ext, options):
    path = tmp_path / f"v.{ext}"
    stamps = write_video(path, 90, codec=codec, gop=12, options=options)
    times = [0.0, 0.2, 0.51, 1.0, 1.0, 2.95, 0.4, 3.4]  # unsorted, repeated, one past the end
    (ours, valid, partial), (theirs, their_valid, their_partial) = _both(path, times)
    expected = [frame_at(stamps, s) for s in times]
    assert [read_index(f) for f in theirs] == [read_index(f) for f in ours] == expected
    assert their_valid.tolist() == valid.tolist() == [True] * 7 + [False]
    assert their_partial is partial is None
    # the same pixels: both convert FFmpeg's YUV frames to RGB with libswscale
    assert theirs.shape == ours.shape and (theirs.int() - ours.int()).abs().max() <= 2


def test_variable_frame_rate_and_a_start_offset(torchcodec, tmp_path):
    durations = [10, 50, 10, 100, 30, 200, 20, 80] * 4
    path = tmp_path / "vfr.mkv"
    stamps = write_video(path, len(durations), durations_ms=durations)
    times = torch.linspace(0, stamps[-1], 17).tolist()
    (ours, _, _), (theirs, _, _) = _both(path, times)
    assert [read_index(f) for f in theirs] == [read_index(f) for f in ours] == [frame_at(stamps, s) for s in times]
    # a stream whose first frame is at 1.4 s: times count from the first frame in both
    offset = tmp_path / "offset.mkv"
    with av.open(str(offset), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width = stream.height = 64
        stream.codec_context.time_base = Fraction(1, 1000)
        for i in range(60):
            frame = av.VideoFrame.from_ndarray(index_frame(i), format="rgb24")
            frame.pts, frame.time_base = 1400 + round(i * 1000 / 30), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with open_video(offset) as reader:
        assert reader.start_pts * reader.time_base == pytest.approx(1.4)
    (ours, _, _), (theirs, _, _) = _both(offset, [0.0, 0.5, 1.9])
    assert [read_index(f) for f in theirs] == [read_index(f) for f in ours] == [0, 15, 57]


@pytest.mark.parametrize("gop", [30, None])
def test_where_torchcodec_picks_other_frames_pyav_answers(torchcodec, tmp_path, gop):
    # MPEG-TS: torchcodec's seek lands past the keyframe before its target (frames 30, 30, 60, 120 for times 0,
    # 0.5, 1, 3), or with one keyframe nothing decodes; every frame it returns is checked against its time
    path = tmp_path / "v.ts"
    stamps = write_video(path, 150, fps=30, gop=gop)
    times = [0.0, 0.5, 1.0, 3.0, 4.9, 0.2]
    with open_video(path, decoder="torchcodec") as reader:
        frames, valid = reader.frames_at(times)
        assert reader.fallbacks == 1 and reader.partial is None
    assert [read_index(f) for f in frames] == [frame_at(stamps, s) for s in times] and valid.all()


def test_a_stream_that_switches_resolution_is_refused_as_pyav_refuses_it(torchcodec, tmp_path):
    path = tmp_path / "switch.ts"
    parts = []
    for size, first in ((64, 0), (128, 30)):  # two MPEG-TS segments, the second twice the size: a broadcast switch
        part = tmp_path / f"{size}.ts"
        with av.open(str(part), "w") as container:
            stream = container.add_stream("libx264", rate=30)
            stream.width = stream.height = size
            for i in range(first, first + 30):
                frame = av.VideoFrame.from_ndarray(index_frame(i, size), format="rgb24")
                frame.pts = i
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
        parts.append(part.read_bytes())
    path.write_bytes(b"".join(parts))
    outcomes = {}
    for decoder in ("pyav", "torchcodec"):
        try:
            with open_video(path, decoder=decoder) as reader:
                reader.frames_at([0.5, 1.5])
                outcomes[decoder] = "ok"
        except DecodeError as err:
            outcomes[decoder] = str(err).split(": ", 1)[1]
    assert outcomes["torchcodec"] == outcomes["pyav"]


def test_frames_scaled_down_match_pyavs_to_within_resampling(torchcodec, tmp_path):
    path = tmp_path / "wide.mp4"
    with av.open(str(path), "w") as container:  # 320 x 192 smooth gradients moving right
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 320, 192, "yuv420p"
        y, x = np.mgrid[0:192, 0:320]
        for i in range(30):
            rgb = np.stack([(x + 4 * i) % 256, y, (x + y) // 2 % 256], -1).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    (ours, _, _), (theirs, _, _) = _both(path, [0.0, 0.5], short_side=96)
    assert ours.shape == theirs.shape == (2, 3, 96, 160)
    mse = ((ours.double() - theirs.double()) ** 2).mean()
    assert 10 * torch.log10(255.0**2 / mse) >= 30  # PSNR between the two resamplers


def test_the_damaged_corpus_gives_pyavs_outcomes(torchcodec, tmp_path):
    corpus = write_corpus(tmp_path / "damaged")
    results = {name: (decode_in_child(p), decode_in_child(p, decoder="torchcodec")) for name, p in corpus.items()}
    other = {name: theirs for name, (_, theirs) in results.items() if theirs[0] not in ("ok", "DecodeError")}
    assert not other, f"torchcodec raised something other than DecodeError, died or hung: {other}"
    for name, (ours, theirs) in results.items():
        assert theirs[0] == ours[0], f"{name}: pyav {ours}, torchcodec {theirs}"
        if ours[0] == "ok":
            _, _, valid, partial = ours
            assert theirs[2] == valid, f"{name}: masks {valid} (pyav) vs {theirs[2]} (torchcodec)"
            assert bool(theirs[3]) == bool(partial), f"{name}: partial {partial!r} (pyav) vs {theirs[3]!r}"
            assert [i for i, v in zip(theirs[1], valid) if v] == [i for i, v in zip(ours[1], valid) if v], name
    assert len(TIMES) == 8 and sum(r[0][0] == "ok" for r in results.values()) >= 10  # the corpus decodes, in part


def test_a_dataset_reads_clips_through_torchcodec(torchcodec, tmp_path):
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        write_video(tmp_path / label / "v.mp4", 90, size=64)
    clips = {}
    for decoder in ("pyav", "torchcodec"):
        spec = ClipSpec(num_frames=4, sampling_rate=8, crop_size=48, scale=(56, 56), decoder=decoder)
        data = VideoFolder(tmp_path, spec=spec, train=False)
        clips[decoder] = torch.stack([data[i]["video"] for i in range(len(data))])
    assert clips["torchcodec"].shape == clips["pyav"].shape == (2, 4, 3, 48, 48)
    assert (clips["torchcodec"] - clips["pyav"]).abs().max() < 0.1  # normalised units: resampling only


@pytest.mark.parametrize(
    "raised,ffmpeg,message",
    [
        (ImportError("No module named 'torchcodec'", name="torchcodec"), "libavutil.so.58", r"pip install torchcodec"),
        (
            OSError("libavutil.so.58: cannot open shared object file"),
            None,
            r"apt-get install ffmpeg.*libavutil\.so\.58",
        ),
        (RuntimeError("Could not load libtorchcodec ... FFmpeg ..."), "libavutil.so.58", r"another torch.*whl/cpu"),
    ],
    ids=["no-torchcodec", "no-ffmpeg", "build-mismatch"],
)
def test_a_torchcodec_that_cant_load_says_what_to_install(monkeypatch, tmp_path, raised, ffmpeg, message):
    import ctypes.util

    real_import, real_find = builtins.__import__, ctypes.util.find_library

    def failing(name, *args, **kwargs):
        if name.startswith("torchcodec"):
            raise raised
        return real_import(name, *args, **kwargs)

    write_video(tmp_path / "v.mp4", 10)
    monkeypatch.setattr(builtins, "__import__", failing)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: ffmpeg if name == "avutil" else real_find(name))
    decode_torchcodec._torchcodec.cache_clear()
    try:
        with pytest.raises(UserError, match=message):
            open_video(tmp_path / "v.mp4", decoder="torchcodec")
    finally:
        decode_torchcodec._torchcodec.cache_clear()


def test_an_unknown_decoder_is_refused_by_name(tmp_path):
    write_video(tmp_path / "v.mp4", 10)
    with pytest.raises(UserError, match="decoder must be one of pyav, torchcodec; got 'decord'"):
        open_video(tmp_path / "v.mp4", decoder="decord")
    with pytest.raises(UserError, match="got 'decord'"):
        ClipSpec(decoder="decord")


def test_refusals_are_pyavs_before_torchcodec_opens_the_file(torchcodec, tmp_path):
    path = tmp_path / "v.mp4"
    write_video(path, 10, size=64)
    with pytest.raises(DecodeError, match="over the limit of 1,000 pixels"):
        open_video(path, decoder="torchcodec", max_pixels=1000)


def test_predict_and_eval_take_the_decoder_from_the_command_line(torchcodec, tmp_path, capsys):
    import json

    import timesformer as tf
    from timesformer.cli import main

    from ..conftest import labelled_tiny_model

    tf.save_pretrained(labelled_tiny_model(), tmp_path / "ckpt")
    for label in ("cat", "dog"):
        (tmp_path / "data" / label).mkdir(parents=True)
        write_video(tmp_path / "data" / label / "v.mp4", 90, size=64)
    (tmp_path / "data" / "dog" / "bad.mp4").write_text("not a video")
    probs = {}
    for decoder in ("pyav", "torchcodec"):
        args = ["predict", str(tmp_path / "data" / "cat" / "v.mp4"), "--checkpoint", str(tmp_path / "ckpt")]
        assert main([*args, "--json", "--topk", "3", "--decoder", decoder]) == 0
        top = json.loads(capsys.readouterr().out)["top"]
        probs[decoder] = {e["class"]: e["prob"] for e in top}
        out = tmp_path / f"eval-{decoder}"
        assert (
            main(
                [
                    "eval",
                    "--checkpoint",
                    str(tmp_path / "ckpt"),
                    "--data",
                    str(tmp_path / "data"),
                    "--decoder",
                    decoder,
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        capsys.readouterr()
    assert probs["torchcodec"] == pytest.approx(probs["pyav"], abs=0.02)
    report = json.loads(next((tmp_path / "eval-torchcodec").rglob("report.json")).read_text())
    assert report["videos"] == 2 and [b.endswith("bad.mp4") for b in report["bad_files"]] == [True]
