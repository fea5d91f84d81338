"""Files the tools write: ordinary permissions, and outputs of videos with the same name never clobber each other.
Also: the declared Python is one the code runs on."""

import json
import os
import re
import stat
import sys
from pathlib import Path

import pytest

import timesformer as tf
from timesformer.cli import main

from .data.videos import write_video

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def umask():
    def set_mask(mask):
        os.umask(mask)

    old = os.umask(0o022)
    yield set_mask
    os.umask(old)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_saved_files_get_ordinary_permissions(tmp_path, umask):
    from timesformer.files import write_json_atomic

    model = tf.create_model("timesformer_tiny", depth=1, dim=32, heads=2, dim_head=16)
    tf.save_pretrained(model, tmp_path / "w")
    write_json_atomic(tmp_path / "classes.json", ["a"])
    assert [
        mode(p)
        for p in (tmp_path / "w" / "model.safetensors", tmp_path / "w" / "config.json", tmp_path / "classes.json")
    ] == [0o644] * 3
    umask(0o027)
    tf.save_pretrained(model, tmp_path / "w2")
    assert {mode(p) for p in (tmp_path / "w2").iterdir()} == {0o640}


def test_the_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    """So that the rename itself survives a power cut, not only the file's bytes."""
    real, synced = os.fsync, []

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            synced.append(sorted(p.name for p in tmp_path.iterdir()))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    tf.save_pretrained(tf.create_model("timesformer_tiny", depth=1, dim=32, heads=2, dim_head=16), tmp_path)
    assert synced and synced[-1] == ["config.json", "model.safetensors"]  # after both renames


@pytest.fixture
def twins(tmp_path):
    """Two different videos called clip.mp4, in two folders, and a checkpoint."""
    for folder, frames in (("a", 20), ("b", 40)):
        (tmp_path / folder).mkdir()
        write_video(tmp_path / folder / "clip.mp4", frames, fps=10, size=32)
    tf.save_pretrained(
        tf.create_model("timesformer_tiny", depth=1, dim=32, heads=2, dim_head=16, labels=tuple("abcdefghijkl")),
        tmp_path / "ckpt",
    )
    return tmp_path


def test_predict_timelines_of_same_named_videos_mirror_their_folders(twins, capsys):
    a, b = twins / "a" / "clip.mp4", twins / "b" / "clip.mp4"
    assert (
        main(
            [
                "predict",
                str(a),
                str(b),
                "--checkpoint",
                str(twins / "ckpt"),
                "--window",
                "1",
                "--sampling-rate",
                "1",
                "--out",
                str(twins / "out"),
            ]
        )
        == 0
    )
    written = {
        p.relative_to(twins / "out").as_posix(): json.loads(p.read_text())["path"]
        for p in (twins / "out").rglob("*.timeline.json")
    }
    assert written == {"a/clip.mp4.timeline.json": str(a), "b/clip.mp4.timeline.json": str(b)}


def test_extract_features_of_same_named_videos_mirror_their_folders(twins, capsys):
    from safetensors import safe_open

    assert (
        main(
            [
                "extract",
                str(twins / "a" / "clip.mp4"),
                str(twins / "b" / "clip.mp4"),
                "--checkpoint",
                str(twins / "ckpt"),
                "--format",
                "safetensors",
                "--sampling-rate",
                "1",
                "--out",
                str(twins / "feats"),
            ]
        )
        == 0
    )
    for folder in ("a", "b"):
        with safe_open(str(twins / "feats" / folder / "clip.mp4.safetensors"), "pt") as f:
            assert f.metadata()["video"] == str(twins / folder / "clip.mp4")
    assert (
        main(
            [
                "extract",
                str(twins / "a" / "clip.mp4"),
                "--checkpoint",
                str(twins / "ckpt"),
                "--sampling-rate",
                "1",
                "--out",
                str(twins / "npy"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "extract",
                str(twins / "b" / "clip.mp4"),
                "--checkpoint",
                str(twins / "ckpt"),
                "--sampling-rate",
                "1",
                "--out",
                str(twins / "npy"),
            ]
        )
        == 2
    )  # another clip.mp4 into the same folder: refused
    assert (twins / "npy" / "clip.source.txt").read_text().strip() == str(twins / "a" / "clip.mp4")


def test_explain_refuses_to_overwrite_another_videos_output(twins, capsys):
    a, b = twins / "a" / "clip.mp4", twins / "b" / "clip.mp4"
    args = ["--checkpoint", str(twins / "ckpt"), "--sampling-rate", "1", "--out", str(twins / "why")]
    assert main(["explain", str(a), *args]) == 0
    before = (twins / "why" / "clip.explain.json").read_bytes()
    capsys.readouterr()
    assert main(["explain", str(b), *args]) == 2
    err = capsys.readouterr().err
    assert f"holds the output for {a}; {b} has the same name and would overwrite it" in err
    assert (twins / "why" / "clip.explain.json").read_bytes() == before
    assert main(["explain", str(a), *args]) == 0  # the same video again: its own output is replaced


def test_the_guard_knows_videos_by_absolute_path(twins, capsys, monkeypatch):
    """clip.mp4 given relative to two working folders is two videos (and ./a/clip.mp4 from above is the same)."""
    args = ["--checkpoint", str(twins / "ckpt"), "--sampling-rate", "1", "--out", str(twins / "why")]
    monkeypatch.chdir(twins / "a")
    assert main(["explain", "clip.mp4", *args]) == 0
    data = json.loads((twins / "why" / "clip.explain.json").read_text())
    assert data["source"] == str(twins / "a" / "clip.mp4") and data["sampling"]["sampling_rate"] == 1
    monkeypatch.chdir(twins / "b")
    assert main(["explain", "clip.mp4", *args]) == 2
    monkeypatch.chdir(twins)
    assert main(["explain", "./a/clip.mp4", *args]) == 0


def test_the_declared_python_is_one_the_code_runs_on():
    """The run config evaluates annotations like ``str | None`` at run time: that needs Python 3.10 (PEP 604).
    The declared minimum is the one CI tests."""
    text = (ROOT / "pyproject.toml").read_text()
    major, minor = map(int, re.search(r'requires-python = ">=(\d+)\.(\d+)"', text).groups())
    assert (major, minor) >= (3, 10), f"requires-python >={major}.{minor}, but str | None needs 3.10"
    assert (major, minor) <= sys.version_info[:2]
