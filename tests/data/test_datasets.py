"""Datasets over real files: folders, lists, Kinetics CSV, multi-label, bad files, DataLoader workers."""

import warnings

import pytest
import torch
from torch.utils.data import DataLoader

from timesformer.data import ClipSpec, VideoFolder, VideoList, collate, read_list

from .videos import read_index, write_video

pytest.importorskip("av")

SPEC = ClipSpec(
    num_frames=4,
    sampling="dense",
    sampling_rate=2,
    fps=10,
    crop_size=64,
    scale=(64, 64),
    flip=False,
    mean=(0.0,) * 3,
    std=(1 / 255,) * 3,
)  # normalisation that keeps pixel values


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    for cls, n in (("jumping", 2), ("running", 1)):
        (root / cls).mkdir()
        for i in range(n):
            write_video(root / cls / f"v{i}.mp4", 30, fps=10)
    (root / "running" / "notes.txt").write_text("not a video")
    return root


def test_video_folder_samples(tree):
    data = VideoFolder(tree, spec=SPEC, train=False)
    assert data.classes == ["jumping", "running"] and len(data) == 3
    sample = data[2]
    assert sample["label"] == 1 and sample["video"].shape == (4, 3, 64, 64) and sample["mask"].all()
    # one test clip in the middle: 3 s video, 8-frame span (0.8 s) -> starts at 1.1 s; offsets
    # floor(linspace(0, 7, 4)) = 0 2 4 7 frames at 10 fps -> frames 11, 13, 15, 18
    assert [read_index(f.round().to(torch.uint8)) for f in sample["video"]] == [11, 13, 15, 18]


def test_video_folder_takes_a_class_order_by_name(tree):
    data = VideoFolder(tree, spec=SPEC, train=False, classes=["walking", "running", "jumping"])
    assert data.classes == ["walking", "running", "jumping"]
    assert [label for _, label in data.items] == [2, 2, 1] and data[2]["label"] == 1
    with pytest.raises(ValueError, match=r"class folder 'jumping' .* not among the 2 classes"):
        VideoFolder(tree, spec=SPEC, train=False, classes=["running", "walking"])


def test_test_views_clips_times_crops(tree):
    spec = ClipSpec(**{**SPEC.__dict__, "num_clips": 2, "num_crops": 3, "crop_size": 48, "scale": (48, 48)})
    data = VideoFolder(tree, spec=spec, train=False)
    assert len(data) == 3 * 6
    views = [data[k] for k in range(6)]
    assert {v["index"] for v in views} == {0} and [v["view"] for v in views] == list(range(6))


def test_short_video_is_masked(tmp_path):
    (tmp_path / "a").mkdir()
    write_video(tmp_path / "a" / "short.mp4", 5, fps=10)  # 0.5 s; a 0.8 s clip
    sample = VideoFolder(tmp_path, spec=SPEC, train=True)[0]
    assert sample["mask"].tolist() == [True, True, True, False]


def test_lists_and_errors(tree, tmp_path):
    (tmp_path / "plain.txt").write_text(f"{tree}/jumping/v0.mp4 0\n{tree}/running/v0.mp4 1\n")
    items, classes = read_list(tmp_path / "plain.txt")
    assert classes == ["0", "1"] and [lab for _, lab in items] == [0, 1]

    (tmp_path / "named.csv").write_text(f"path,label\n{tree}/jumping/v0.mp4,jumping\n{tree}/running/v0.mp4,running\n")
    assert read_list(tmp_path / "named.csv")[1] == ["jumping", "running"]

    (tmp_path / "multi.txt").write_text(f"{tree}/jumping/v0.mp4 0,2\n{tree}/running/v0.mp4 1\n")
    data = VideoList(tmp_path / "multi.txt", spec=SPEC, train=False)
    assert data.multi_label and data[0]["label"].tolist() == [1.0, 0.0, 1.0] and data[1]["label"].tolist() == [0, 1, 0]

    (tmp_path / "bad_line.txt").write_text(f"{tree}/jumping/v0.mp4 0\njust-a-path\n")
    with pytest.raises(ValueError, match=r"bad_line.txt:2: expected '<path> <label>'; got 'just-a-path'"):
        read_list(tmp_path / "bad_line.txt")
    (tmp_path / "bad_label.csv").write_text(f"path,label\n{tree}/jumping/v0.mp4,jumping\nx.mp4,swimming\n")
    with pytest.raises(ValueError, match=r"bad_label.csv:3: unknown label 'swimming'"):
        read_list(tmp_path / "bad_label.csv", classes=["jumping", "running"])
    (tmp_path / "range.txt").write_text("a.mp4 5\n")
    with pytest.raises(ValueError, match=r"range.txt:1: label 5 is out of range for 2 classes"):
        read_list(tmp_path / "range.txt", classes=["a", "b"])


def test_kinetics_csv(tmp_path):
    (tmp_path / "abseiling").mkdir()
    write_video(tmp_path / "abseiling" / "0347ZoDXyP0_000095_000105.mp4", 10)
    write_video(tmp_path / "zumba_xyz_000001_000011.mp4", 10)
    (tmp_path / "k.csv").write_text(
        "label,youtube_id,time_start,time_end,split\nabseiling,0347ZoDXyP0,95,105,train\nzumba,zumba_xyz,1,11,train\n"
    )
    items, classes = read_list(tmp_path / "k.csv")
    assert classes == ["abseiling", "zumba"]
    assert [p.name for p, _ in items] == ["0347ZoDXyP0_000095_000105.mp4", "zumba_xyz_000001_000011.mp4"]
    assert all(p.exists() for p, _ in items)


def test_bad_files_are_skipped_reported_and_never_kill_an_epoch(tree, tmp_path):
    good = tree / "jumping" / "v0.mp4"
    (tmp_path / "trunc.mp4").write_bytes(good.read_bytes()[:500])
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "list.txt").write_text(
        f"{good} 0\n{tmp_path}/trunc.mp4 1\n{tmp_path}/missing.mp4 0\n{tmp_path}/empty.mp4 1\n{good} 1\n"
    )
    data = VideoList(tmp_path / "list.txt", spec=SPEC, train=True)
    for workers in (0, 2):
        loader = DataLoader(data, batch_size=2, num_workers=workers, collate_fn=collate)
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            batches = list(loader)
        bad = sorted(p.split("/")[-1] for b in batches for p, _ in b["bad"])
        assert bad == ["empty.mp4", "missing.mp4", "trunc.mp4"]
        assert sum(len(b["label"]) for b in batches if b["video"] is not None) == 2
    strict = VideoList(tmp_path / "list.txt", spec=SPEC, train=True, on_error="raise")
    with pytest.raises(ValueError, match="trunc.mp4"):
        strict[1]


def test_empty_folder_error(tmp_path):
    (tmp_path / "cls").mkdir()
    with pytest.raises(ValueError, match="no videos found"):
        VideoFolder(tmp_path)


def test_clip_spec_from_a_model_config_takes_its_frames_crop_normalisation_and_protocol():
    """The one place a model's config becomes test views (eval, predict, explain and the server all use it)."""
    import timesformer as tf
    from timesformer.inference import Predictor

    cfg = tf.get_config("timesformer_tiny", image_size=48, num_frames=6, sampling="segment", mean=(0.5,) * 3)
    spec = ClipSpec.from_config(cfg, clips=2, crops=3)
    assert (spec.num_frames, spec.crop_size, spec.num_clips, spec.num_crops) == (6, 48, 2, 3)
    assert (spec.sampling, spec.sampling_rate, spec.fps) == ("segment", cfg.sampling_rate, cfg.fps)
    assert (spec.mean, spec.std) == ((0.5,) * 3, cfg.std)
    told = ClipSpec.from_config(cfg, sampling="dense", sampling_rate=4, fps=12.5)
    assert (told.sampling, told.sampling_rate, told.fps, told.num_clips, told.num_crops) == ("dense", 4, 12.5, 1, 1)
    assert Predictor(tf.model.TimeSformer(cfg), clips=2, crops=3).spec == spec  # predict and the server
