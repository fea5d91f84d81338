"""The Hugging Face Hub's conventions: ``TimeSformer.from_pretrained`` / ``save_pretrained`` / ``push_to_hub``.

No network is reachable where these tests run: the Hub is replaced by local folders, and the upload by a fake
``HfApi`` that records what would have been sent."""

import json
import time

import pytest
import torch

import timesformer as tf

from .conftest import labelled_tiny_model


@pytest.fixture
def model():
    return tf.TimeSformer.promote(labelled_tiny_model())


def clip():
    torch.manual_seed(3)
    return torch.randn(2, 4, 3, 32, 32)


def test_save_and_load_a_folder_keep_the_logits_labels_and_preprocessing(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = tf.TimeSformer.from_pretrained(tmp_path / "m")
    assert type(loaded) is tf.TimeSformer and loaded.config == model.config
    torch.testing.assert_close(loaded(clip()), model(clip()), atol=0, rtol=0)
    assert tf.load_pretrained(tmp_path / "m").config.labels == ("cat", "dog", "eel")  # the native format, unchanged
    assert tf.TimeSformer.from_pretrained(tmp_path / "m", drop_path_rate=0.1).config.drop_path_rate == 0.1  # overrides


def test_every_top_level_constructor_gives_a_hub_model(model, tmp_path):
    assert isinstance(tf.create_model("timesformer_tiny"), tf.TimeSformer)
    tf.save_pretrained(model, tmp_path / "native")
    assert isinstance(tf.load_pretrained(tmp_path / "native"), tf.TimeSformer)
    tf.save_pretrained(tf.model.create_model("timesformer_tiny"), tmp_path / "preset")  # the pure network's
    assert isinstance(tf.create_model("timesformer_tiny", pretrained=tmp_path / "preset"), tf.TimeSformer)
    assert not issubclass(tf.model.TimeSformer, tf.TimeSformer)  # the network itself knows nothing of the Hub


def test_the_model_card_gives_config_labels_preprocessing_and_recorded_results(model, tmp_path):
    run = tmp_path / "run"
    model.save_pretrained(run / "best")
    card = (run / "best" / "README.md").read_text()
    assert "library_name: timesformer" in card and "pipeline_tag: video-classification" in card
    assert "| `attention` | divided |" in card and "| `num_frames` | 4 |" in card
    assert "`cat`, `dog`, `eel` (3 classes)" in card
    assert "one every 32 frames at 30 fps (dense sampling)" in card and "mean [0.45, 0.45, 0.45]" in card
    assert "No evaluation results were recorded" in card

    # a training run records its validation in metrics.jsonl beside the checkpoint: the best epoch reaches the card
    lines = [{"epoch": 1, "val_top1": 0.5, "val_top5": 1.0}, {"step": 9, "loss": 1.0}, {"epoch": 2, "val_top1": 0.75}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    loaded = tf.TimeSformer.from_pretrained(run / "best")
    assert loaded.evaluation == {"source": "training run (best validation epoch)", "epoch": 2, "val_top1": 0.75}
    loaded.save_pretrained(tmp_path / "copy")
    assert "| val_top1 | 0.7500 |" in (tmp_path / "copy" / "README.md").read_text()
    assert tf.TimeSformer.from_pretrained(tmp_path / "copy").evaluation == loaded.evaluation  # and on, saved again
    time.sleep(0.01)
    (tmp_path / "copy" / "report.json").write_text(json.dumps({"top1": 0.6}))  # a later `timesformer eval` wins
    assert tf.TimeSformer.from_pretrained(tmp_path / "copy").evaluation == {"source": "timesformer eval", "top1": 0.6}
    model.save_pretrained(tmp_path / "copy")  # a model without results leaves none of the earlier save's
    assert not (tmp_path / "copy" / "evaluation.json").exists()

    # `timesformer eval` writes report.json into the checkpoint folder: it wins over the run's metrics
    report = {"data": "val.csv", "views": "1x3", "videos": 40, "top1": 0.8, "top5": 1.0, "confusion": [[1]]}
    (run / "best" / "report.json").write_text(json.dumps(report))
    loaded = tf.TimeSformer.from_pretrained(run / "best")
    assert loaded.evaluation == {"source": "timesformer eval", **{k: v for k, v in report.items() if k != "confusion"}}
    (run / "best" / "README.md").unlink()
    loaded.save_pretrained(run / "best")
    assert "| top1 | 0.8000 |" in (run / "best" / "README.md").read_text()


class FakeApi:
    """Stands in for ``huggingface_hub.HfApi``: records the repository and the files of the one upload."""

    uploads = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, private=None, exist_ok=False, **kwargs):
        from types import SimpleNamespace

        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, repo_id, folder_path, **kwargs):
        from pathlib import Path

        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        FakeApi.uploads.append({"repo_id": repo_id, "files": files, **kwargs})
        return f"https://huggingface.co/{repo_id}/commit/0"


def test_push_to_hub_uploads_the_native_files_and_a_card_naming_the_repo(model, tmp_path, monkeypatch):
    import huggingface_hub.hub_mixin

    monkeypatch.setattr(huggingface_hub.hub_mixin, "HfApi", FakeApi)
    FakeApi.uploads.clear()
    url = model.push_to_hub("someone/tiny-motion", commit_message="first")
    assert url == "https://huggingface.co/someone/tiny-motion/commit/0"
    (upload,) = FakeApi.uploads
    assert upload["repo_id"] == "someone/tiny-motion" and upload["commit_message"] == "first"
    assert sorted(upload["files"]) == ["README.md", "config.json", "model.safetensors"]
    assert 'TimeSformer.from_pretrained("someone/tiny-motion")' in upload["files"]["README.md"].decode()

    # what was sent loads back, from a (fake) download of that repository
    (tmp_path / "snap").mkdir()
    for name, data in upload["files"].items():
        (tmp_path / "snap" / name).write_bytes(data)
    downloads = []

    def snapshot_download(repo_id, **kwargs):
        downloads.append((repo_id, kwargs["allow_patterns"]))
        return str(tmp_path / "snap")

    def hf_hub_download(repo_id, filename, **kwargs):
        return str(tmp_path / "snap" / filename)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub.hub_mixin, "hf_hub_download", hf_hub_download)
    loaded = tf.TimeSformer.from_pretrained("someone/tiny-motion")
    assert downloads[0][0] == "someone/tiny-motion" and "model.safetensors" in downloads[0][1]
    torch.testing.assert_close(loaded(clip()), model(clip()), atol=0, rtol=0)
