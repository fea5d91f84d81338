"""timesformer prepare: fixture videos re-encoded small with short keyframe intervals -- the layout kept, the
frames predict picks within the codec's loss, bad files reported and never stopping the job, a rerun after a kill
finishing exactly what is left, lists rewritten, shards disjoint."""

import json
import time

import numpy as np
import pytest
import torch

from timesformer.cli import main
from timesformer.data import VideoList, open_video
from timesformer.data.prepare import Settings, prepare_videos

from ..engine.helpers import cli, start, stop, wait_for
from .videos import write_video

av = pytest.importorskip("av")


def video(path, frames, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, frames, **kw)


def fixture_videos(root, count=3, size=400, frames=60):
    for i in range(count):
        video(root / ("a" if i % 2 else "b") / f"v{i}.mp4", frames, size=size, gop=250)
    video(root / "whole.mp4", frames, size=size, gop=10, container_options={"movflags": "faststart"})
    full = (root / "whole.mp4").read_bytes()
    (root / "whole.mp4").unlink()
    (root / "b" / "cut.mp4").write_bytes(full[: int(len(full) * 0.6)])  # its index first: opens, then breaks
    (root / "a" / "notes.mp4").write_text("not a video")
    return root


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return 10 * np.log10(255**2 / max(mse, 1e-10))


def keyframe_gaps(path) -> int:
    """The most frames from a keyframe to the next (or to the end)."""
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(video=0) if p.size]
    keys = [i for i, p in enumerate(packets) if p.is_keyframe]
    return int(max(np.diff(keys + [len(packets)])))


def test_prepare_keeps_the_layout_and_the_frames_and_reports_bad_files(tmp_path):
    src = fixture_videos(tmp_path / "src")
    report = prepare_videos(src, tmp_path / "out", settings=Settings(short_side=320, gop=16))
    out = tmp_path / "out"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.mp4")) == [
        "a/v1.mp4",
        "b/cut.mp4",
        "b/v0.mp4",
        "b/v2.mp4",
    ]
    assert (
        list(report["bad"]) == [str(src / "a" / "notes.mp4")]
        and "not a readable video" in report["bad"][str(src / "a" / "notes.mp4")]
    )
    assert list(report["partial"]) == [str(src / "b" / "cut.mp4")]
    assert json.loads((out / "prepare-report.json").read_text())["bad"] == report["bad"]
    with open_video(out / "b" / "v0.mp4") as small, open_video(src / "b" / "v0.mp4", short_side=320) as big:
        assert (small.duration, small.num_frames) == pytest.approx((big.duration, big.num_frames), abs=0.04)
        times = torch.tensor([0.1, 0.55, 1.0, 1.7])  # what a predict view picks: the same frames, to the codec's loss
        ours, _ = small.frames_at(times)
        theirs, _ = big.frames_at(times)
    assert ours.shape[-2:] == (320, 320) and ours.shape == theirs.shape
    assert psnr(ours, theirs) >= 35
    assert keyframe_gaps(out / "b" / "v0.mp4") <= 16 < keyframe_gaps(src / "b" / "v0.mp4")
    assert report["bytes_out"] > 0 and report["bytes_in"] > 0  # space saved: a benchmark's figure, not these files


def test_a_rerun_after_a_kill_does_only_what_is_left_and_other_settings_are_refused(tmp_path):
    src = tmp_path / "src"
    for i in range(6):
        video(src / "c" / f"v{i}.mp4", 90, size=400, gop=250)
    out = tmp_path / "out"
    proc = start(cli("prepare", str(src), "--out", str(out)))
    try:
        wait_for(lambda: len(list(out.rglob("v*.mp4"))) >= 2, 120, "two files prepared", proc)
    finally:
        stop(proc)  # SIGKILL mid-job: most likely inside the third file's encode
    done_before = {p: p.stat().st_mtime_ns for p in out.rglob("v*.mp4")}
    assert 2 <= len(done_before) < 6
    time.sleep(0.01)
    report = prepare_videos(src, out)
    assert report["skipped"] == len(done_before) and len(report["done"]) == 6 - len(done_before)
    assert all(p.stat().st_mtime_ns == t for p, t in done_before.items())  # nothing done twice
    for p in out.rglob("v*.mp4"):
        with open_video(p) as reader:
            assert reader.num_frames == 90 and reader.partial is None
    with pytest.raises(ValueError, match=r"was prepared with short_side=320; this run asks for 256"):
        prepare_videos(src, out, settings=Settings(short_side=256))


def test_a_list_is_rewritten_beside_the_videos_and_shards_split_the_work(tmp_path):
    src = tmp_path / "src"
    for i in range(4):
        video(src / "vids" / f"clip {i}.mp4", 30, size=64)
    (src / "train.txt").write_text("".join(f"vids/clip {i}.mp4 {i % 2}\n" for i in range(4)))
    out = tmp_path / "out"
    first = prepare_videos(src / "train.txt", out, shard=(0, 2))
    second = prepare_videos(src / "train.txt", out, shard=(1, 2))
    assert len(first["done"]) == len(second["done"]) == 2 and not set(first["done"]) & set(second["done"])
    assert (out / "prepare-report-0-of-2.json").exists() and (out / "prepare-report-1-of-2.json").exists()
    assert (out / "train.txt").read_text() == (src / "train.txt").read_text()  # already .mp4: the same names
    prepared = VideoList(out / "train.txt")
    assert [p.name for p, _ in prepared.items] == [f"clip {i}.mp4" for i in range(4)]
    with open_video(prepared.items[0][0]) as reader:
        assert min(reader.container.streams.video[0].width, reader.container.streams.video[0].height) == 64


def test_the_command_prints_a_summary_and_a_dry_run_writes_nothing(tmp_path, capsys):
    src = fixture_videos(tmp_path / "src", count=2, size=96, frames=60)
    assert main(["prepare", str(src), "--out", str(tmp_path / "dry"), "--dry-run"]) == 0
    assert "videos" in capsys.readouterr().out and not (tmp_path / "dry").exists()
    assert main(["prepare", str(src), "--out", str(tmp_path / "out"), "--workers", "2"]) == 0
    captured = capsys.readouterr()
    assert "3 prepared (1 partial), 0 already there, 1 bad" in captured.out
    assert "notes.mp4" in captured.err


def test_under_torchrun_each_process_prepares_its_shard(tmp_path):
    """Two processes (torchrun sets RANK and WORLD_SIZE): every file once, a report per shard, the list once."""
    from ..engine.helpers import run, torchrun

    src = tmp_path / "src"
    for i in range(5):
        video(src / "d" / f"v{i}.mp4", 20, size=48)
    proc = run(torchrun(2, "prepare", str(src), "--out", str(tmp_path / "out")), timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads((tmp_path / "out" / f"prepare-report-{i}-of-2.json").read_text()) for i in range(2)]
    done = [d for r in reports for d in r["done"]]
    assert sorted(done) == sorted(str(tmp_path / "out" / "d" / f"v{i}.mp4") for i in range(5))
    assert [len(r["done"]) for r in reports] == [3, 2]
