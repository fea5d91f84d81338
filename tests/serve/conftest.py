"""What the serve tests share: the tiny labelled model, the videos they upload, and the server's upload folder."""

import tempfile

import pytest

from ..conftest import labelled_tiny_model
from ..data.videos import write_video


@pytest.fixture(scope="module")
def model():
    return labelled_tiny_model()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    write_video(root / "a.mp4", 90, fps=30, size=64)  # 3 s
    write_video(root / "short.mp4", 2, fps=30, size=64)  # fewer frames than one clip
    (root / "notes.mp4").write_text("this is not a video")
    (root / "empty.mp4").write_bytes(b"")
    write_video(root / "f.mp4", 90, fps=30, size=64, gop=10, container_options={"movflags": "faststart"})
    data = (root / "f.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: int(len(data) * 0.6)])  # its index first: it opens, then breaks
    return root


@pytest.fixture
def uploads(tmp_path, monkeypatch):
    """Where the server's temporary upload folders go (checked empty after each test)."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder
    assert list(folder.iterdir()) == []  # every upload deleted, on success and on error
