"""Decoding real encoded videos: exact frames at requested times, across codecs, VFR and seeking."""

import pytest
import torch

from timesformer.data import DecodeError, FrameFolderReader, VideoReader, open_video
from timesformer.data.decode import decode_all, frame_at

from .videos import index_frame, read_index, write_video

av = pytest.importorskip("av")

CODECS = [("libx264", "mp4"), ("libvpx-vp9", "webm"), ("mjpeg", "avi")]


@pytest.mark.parametrize("codec,ext", CODECS)
def test_frames_at_times_are_exact(tmp_path, codec, ext):
    path = tmp_path / f"v.{ext}"
    stamps = write_video(path, 90, codec=codec)
    times = [0.0, 0.2, 0.51, 1.0, 1.0, 2.95, 0.4]  # unsorted and repeated on purpose
    with VideoReader(path) as reader:
        assert reader.duration == pytest.approx(3.0, abs=0.05)
        frames, valid = reader.frames_at(times)
    assert frames.dtype == torch.uint8 and frames.shape == (7, 3, 64, 64)
    assert [read_index(f) for f in frames] == [frame_at(stamps, s) for s in times] == [0, 6, 15, 30, 30, 88, 12]
    assert valid.all()


def test_variable_frame_rate_uses_timestamps(tmp_path):
    durations = [10, 50, 10, 100, 30, 200, 20, 80] * 4
    path = tmp_path / "vfr.mp4"
    stamps = write_video(path, len(durations), durations_ms=durations)
    decoded, decoded_stamps = decode_all(path)
    assert decoded_stamps == pytest.approx(stamps)  # the container kept the irregular timestamps
    times = torch.linspace(0, stamps[-1], 17).tolist()
    with VideoReader(path) as reader:
        frames, _ = reader.frames_at(times)
    expected = [frame_at(stamps, s) for s in times]
    assert [read_index(f) for f in frames] == expected
    # an index-based sampler at the average rate would pick other frames: VFR matters here
    naive = [min(int(s * len(stamps) / stamps[-1]), len(stamps) - 1) for s in times]
    assert naive != expected


@pytest.mark.parametrize("gop", [30, None])  # None: x264's 250, one keyframe in the file
def test_a_seek_that_lands_past_its_target_backs_off(tmp_path, gop):
    # MPEG-TS seeks by timestamps read from the stream and lands past the keyframe before the target: the first frame
    # decoded after it is later than the time asked for (it was passed off as that time's frame), or none decodes
    path = tmp_path / "v.ts"
    stamps = write_video(path, 150, fps=30, gop=gop)
    times = [0.0, 0.5, 1.0, 3.0, 4.9, 0.2]
    with VideoReader(path) as reader:
        frames, valid = reader.frames_at(times)
        assert reader.partial is None
    assert [read_index(f) for f in frames] == [frame_at(stamps, s) for s in times] == [0, 15, 30, 90, 147, 6]
    assert valid.all()


def test_seeking_decodes_only_what_the_clip_needs(tmp_path):
    path = tmp_path / "long.mp4"
    stamps = write_video(path, 600, fps=30, gop=30)  # 20 s, a keyframe every second
    times = [14.0 + k / 30 for k in range(0, 32, 4)]  # 8 frames near the end
    with VideoReader(path) as reader:
        frames, _ = reader.frames_at(times)
        decoded = reader.frames_decoded
    assert [read_index(f) for f in frames] == [frame_at(stamps, s) for s in times]
    assert decoded < 120, f"decoded {decoded} of 600 frames for an 8-frame clip"
    # segment-style times far apart: seeks between them, still exact
    spread = [0.5 + 2.4 * k for k in range(8)]
    with VideoReader(path) as reader:
        frames, _ = reader.frames_at(spread)
        assert reader.frames_decoded < 400
    assert [read_index(f) for f in frames] == [frame_at(stamps, s) for s in spread]


def test_short_keyframe_intervals_are_crossed_by_seeking(tmp_path):
    # a keyframe every 16 frames (what prepare writes), a clip of 8 frames 32 apart: once two keyframes in a row
    # show the interval, each gap is crossed by a seek, not by decoding the reference frames in between
    path = tmp_path / "gop16.mp4"
    stamps = write_video(path, 300, fps=30, gop=16)
    times = [0.3 + k * 32 / 30 for k in range(8)]
    with VideoReader(path) as reader:
        frames, _ = reader.frames_at(times)
        assert reader.key_interval == pytest.approx(16 / 30)
        assert reader.frames_decoded <= 100, reader.frames_decoded  # 179 when decoding through
    assert [read_index(f) for f in frames] == [frame_at(stamps, s) for s in times]


def test_keyframe_intervals_that_vary_stop_the_seeking_by_them(tmp_path):
    # keyframes at frames 0 and 6, then 256: the first interval (0.2 s) says nothing of the next; a seek by it lands
    # on frame 6 again and again (513 frames decoded for 8 times 1.1 s apart); once one skips nothing, they stop
    path = tmp_path / "k06.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width = stream.height = 64
        stream.options = {"crf": "18", "forced-idr": "1"}
        for i in range(300):
            frame = av.VideoFrame.from_ndarray(index_frame(i), format="rgb24")
            if i == 6:
                frame.pict_type = av.video.frame.PictureType.I
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    times = [1.1 * k for k in range(8)]
    with VideoReader(path) as reader:
        frames, _ = reader.frames_at(times)
        assert reader.frames_decoded <= 200, reader.frames_decoded
    assert [read_index(f) for f in frames] == [frame_at([i / 30 for i in range(300)], s) for s in times]


def test_times_past_the_end_repeat_the_last_frame(tmp_path):
    path = tmp_path / "short.mp4"
    write_video(path, 10, fps=10)
    with VideoReader(path) as reader:
        frames, valid = reader.frames_at([0.0, 0.95, 1.5, 3.0])
    assert [read_index(f) for f in frames] == [0, 9, 9, 9]
    assert valid.tolist() == [True, True, False, False]


def test_frame_folder(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(12):  # natural order: frame_2 before frame_10
        with av.open(str(folder / f"frame_{i}.{'png' if i % 2 else 'jpg'}"), "w") as c:
            s = c.add_stream("png" if i % 2 else "mjpeg")
            s.width = s.height = 64
            s.pix_fmt = "rgb24" if i % 2 else "yuvj420p"
            c.mux(s.encode(av.VideoFrame.from_ndarray(index_frame(i), format="rgb24")))
            c.mux(s.encode())
    reader = open_video(folder, frames_fps=6)
    assert isinstance(reader, FrameFolderReader) and reader.duration == 2.0
    frames, valid = reader.frames_at([0.0, 0.5, 1.99, 2.5])
    assert [read_index(f) for f in frames] == [0, 3, 11, 11]
    assert valid.tolist() == [True, True, True, False]


def test_corrupt_files_raise_decode_errors_naming_the_file(tmp_path):
    good = tmp_path / "good.mp4"
    write_video(good, 30)
    data = good.read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (tmp_path / "random.mp4").write_bytes(torch.randint(0, 256, (5000,), dtype=torch.uint8).numpy().tobytes())
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.avi").write_text("not a video at all\n" * 50)
    for name in ("truncated.mp4", "random.mp4", "empty.mp4", "text.avi", "missing.mp4"):
        with pytest.raises(DecodeError, match=name):
            VideoReader(tmp_path / name).frames_at([0.0, 0.5])
