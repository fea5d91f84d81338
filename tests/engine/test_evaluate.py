"""``evaluate_checkpoint``: what ``timesformer eval`` runs, callable without the command line."""

import json

import pytest

import timesformer as tf
from timesformer.data import CLASSES, write_synthetic
from timesformer.engine.evaluate import evaluate_checkpoint

pytest.importorskip("av")


def test_evaluate_checkpoint_writes_and_returns_the_report(tmp_path):
    root = write_synthetic(tmp_path / "files", 12, size=32, num_frames=4)
    model = tf.create_model("timesformer_tiny", depth=1, dim=32, heads=2, dim_head=16, num_frames=4, labels=CLASSES)
    tf.save_pretrained(model, tmp_path / "ckpt")
    report = evaluate_checkpoint(tmp_path / "ckpt", root, crops=3, sampling="segment", batch_size=4)
    assert report == json.loads((tmp_path / "ckpt" / "report.json").read_text())  # beside the checkpoint by default
    assert (tmp_path / "ckpt" / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert report["videos"] == 12 and report["views"] == "1x3" and report["bad_files"] == []
    assert report["sampling"]["sampling"] == "segment" and list(report["per_class"]) == list(CLASSES)
    with pytest.raises(ValueError, match="crops"):  # the views are checked where the spec is built
        evaluate_checkpoint(tmp_path / "ckpt", root, crops=2, out=tmp_path / "no")
