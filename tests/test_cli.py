"""The command line: demo, convert, errors and exit codes."""
import json
import subprocess
import sys

import torch

import timesformer as tf
from timesformer.cli import main

from .conftest import small_model


def test_demo_trains_both_models_and_prints_the_table(tmp_path, capsys):
    """The demo's full path on a seconds-long budget (the real run is `make demo`)."""
    assert main(["demo", "--minutes", "0.1", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "| divided space-time (T+S) |" in out and "| space-only (S) |" in out and "direction accuracy" in out
    for name in ("loss_curves.png", "confusion_divided.png", "confusion_space.png", "results.json"):
        assert (tmp_path / "demo" / name).stat().st_size > 0
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert set(results) == {"divided", "space"} and results["divided"]["videos"] == 1200


def test_convert_native_to_hf_and_back(tmp_path, capsys):
    model = small_model(labels=tuple("abcde"))
    tf.save_pretrained(model, tmp_path / "native")
    assert main(["convert", str(tmp_path / "native"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "timesformer"
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    video = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(tf.load_pretrained(tmp_path / "back")(video), model(video), atol=1e-5, rtol=1e-5)


def test_convert_refuses_to_overwrite(tmp_path, capsys):
    tf.save_pretrained(small_model(), tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("mine")
    assert main(["convert", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "b" / "keep.txt").read_text() == "mine"


def test_bad_checkpoint_exit_code_2(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    proc = subprocess.run([sys.executable, "-m", "timesformer", "convert", str(tmp_path / "junk.pth"),
                           str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "junk.pth: not a readable checkpoint" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_synth_writes_a_video_folder(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--num", "13", "--split", "val"]) == 0
    files = sorted((tmp_path / "val").glob("*/*.mp4"))
    assert len(files) == 13 and {f.parent.name for f in files} >= {"move_left", "move_right", "still_cross"}
    from timesformer.data import VideoFolder

    assert len(VideoFolder(tmp_path / "val")) == 13
    assert main(["synth", "--out", str(tmp_path), "--num", "0"]) == 2
