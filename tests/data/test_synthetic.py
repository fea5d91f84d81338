"""SyntheticMotion: deterministic, exact time-reversed twins, and the reversal property on statistics."""

import torch

from timesformer.data import CLASSES, REVERSED_PAIRS, SyntheticMotion, VideoFolder, write_synthetic
from timesformer.data.datasets import ClipSpec


def test_deterministic_and_split_dependent():
    a, b = SyntheticMotion(24, seed=3), SyntheticMotion(24, seed=3)
    assert all(torch.equal(a.clip(i)[0], b.clip(i)[0]) for i in range(24))
    assert not torch.equal(a.clip(5)[0], SyntheticMotion(24, seed=3, split="val").clip(5)[0])
    assert [a.clip(i)[1] for i in range(13)] == list(range(12)) + [0]


def test_reversed_classes_are_exact_time_reversals():
    data = SyntheticMotion(48, size=32)
    for slot in range(4):
        for x, y in REVERSED_PAIRS:
            forward, _ = data.clip(slot * 12 + x)
            backward, _ = data.clip(slot * 12 + y)
            assert torch.equal(forward.flip(0), backward)
            assert not torch.equal(forward, backward)  # order is the only difference


def test_the_transfer_motions_are_new_exact_reversal_pairs_and_leave_the_12_as_they_were():
    from timesformer.data.synthetic import TRANSFER_CLASSES

    new = SyntheticMotion(24, size=32, classes=TRANSFER_CLASSES)
    assert new.classes == list(TRANSFER_CLASSES) and len(set(TRANSFER_CLASSES) & set(CLASSES)) == 0
    for slot in range(4):
        for x in (0, 2, 4):
            forward, _ = new.clip(slot * 6 + x)
            backward, _ = new.clip(slot * 6 + x + 1)
            assert torch.equal(forward.flip(0), backward) and not torch.equal(forward, backward)
    # the shape moves: its frames differ from one another (not a still class)
    clip = new.clip(4)[0].float()
    assert (clip[0] - clip[-1]).abs().mean() > 3
    # adding them changed none of the original clips' draws (the demo's data)
    old = SyntheticMotion(12, size=32)
    assert int(old.clip(0)[0].float().sum()) == int(SyntheticMotion(12, size=32).clip(0)[0].float().sum())


def test_reversal_pairs_agree_on_mean_frame_and_histogram():
    data = SyntheticMotion(12 * 60, size=32)
    clips = {c: torch.stack([data.clip(s * 12 + c)[0] for s in range(60)]).float() for c in range(12)}
    for x, y in REVERSED_PAIRS:
        mean_x, mean_y = clips[x].mean((0, 1)), clips[y].mean((0, 1))
        assert (mean_x - mean_y).abs().max() < 1e-3  # per-class mean frame
        hist_x, hist_y = (torch.histc(clips[c], bins=32, min=0, max=255) for c in (x, y))
        assert torch.equal(hist_x, hist_y)
        # while the classes do differ frame by frame in time
        assert (clips[x][:, 0].mean(0) - clips[y][:, 0].mean(0)).abs().mean() > 1.0


def test_written_files_round_trip_through_video_folder(tmp_path):
    root = write_synthetic(tmp_path, 24, split="train", size=32, num_frames=8, fps=8)
    data = VideoFolder(
        root, spec=ClipSpec(num_frames=8, sampling="segment", crop_size=32, scale=(32, 32), flip=False), train=False
    )
    assert data.classes == sorted(CLASSES) and len(data) == 24
    sample = data[0]
    assert sample["video"].shape == (8, 3, 32, 32) and sample["mask"].all()
    # the decoded clip is the generated one (H.264 at crf 10: small error)
    name = data.classes[sample["label"]]
    synth = SyntheticMotion(24, size=32)
    index = next(i for i in range(24) if CLASSES[synth.clip(i)[1]] == name)
    from timesformer.data import normalize

    expected = normalize(synth.clip(index)[0], (0.45,) * 3, (0.225,) * 3)
    assert (sample["video"] - expected).abs().mean() < 0.15
