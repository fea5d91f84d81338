"""Damaged and odd files the tests write themselves: each one decodes with correct masks or is reported (a
``DecodeError``, or a partial file with the frames past the break masked), never raises anything else, never
hangs; and datasets, training and predict report them without stopping."""

import multiprocessing
import warnings

import pytest
import torch

from timesformer.data import ClipSpec, DecodeError, VideoFolder, collate, open_video
from timesformer.data import decode as decode_module

from .damaged import FPS, FRAMES, write_corpus
from .videos import read_index, write_video

pytest.importorskip("av")

TIMES = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 2.9, 3.5]
EXPECTED = [min(round(s * FPS), FRAMES - 1) for s in TIMES]  # frame on screen; 3.5 s is past the end
SOURCES = ("mp4", "faststart", "mkv")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("damaged"))


def _decode(path, queue, decoder):
    try:
        with open_video(path, decoder=decoder) as reader:
            frames, valid = reader.frames_at(TIMES)
            queue.put(("ok", [read_index(f) for f in frames], valid.tolist(), reader.partial))
    except DecodeError as err:
        queue.put(("DecodeError", str(err)))
    except BaseException as err:  # what the test is looking for: anything at all
        queue.put(("other", f"{type(err).__name__}: {err}"))


def decode_in_child(path, timeout=30.0, decoder="pyav"):
    """Decode in a forked process, so that a hang is a result, not a stuck test."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_decode, args=(path, queue, decoder))
    child.start()
    child.join(timeout)
    if child.is_alive():
        child.kill()
        return ("hang",)
    return queue.get(timeout=5) if not queue.empty() else ("died", child.exitcode)


def test_every_file_decodes_with_correct_masks_or_is_reported(corpus):
    results = {name: decode_in_child(path) for name, path in corpus.items()}
    wrong = {name: r for name, r in results.items() if r[0] not in ("ok", "DecodeError")}
    assert not wrong, f"raised something other than DecodeError, died or hung: {wrong}"
    for name, result in results.items():
        if result[0] != "ok":
            continue
        _, indices, valid, partial = result
        if name in SOURCES or name.startswith("long_audio"):  # undamaged: exact frames, everything in it valid
            assert (indices, valid, partial) == (EXPECTED, [True] * 7 + [False], None), f"{name}: {result}"
        elif name == "one_image":
            assert (indices[0], valid, partial) == (0, [True] + [False] * 7, None)
        else:  # damaged and decodable: reported partial; no frame past the break is passed off as valid
            assert partial and partial.startswith("decoding stopped at"), f"{name} not reported: {result}"
            stop = float(partial.split()[3])
            assert all(not v for s, v in zip(TIMES, valid) if s >= stop + 1e-3), f"{name}: {result}"
            assert valid[0], f"{name}: its first frame decoded"
            if name.startswith("cut_"):  # the frames before a cut are the right ones (within one B-frame)
                assert all(abs(i - e) <= 1 for i, e, v in zip(indices, EXPECTED, valid) if v), f"{name}: {result}"
    # the cases the issue names, as they behave here
    assert results["tag"][0] == "DecodeError" and "no decoder for its video codec" in results["tag"][1]
    assert results["empty"] == ("DecodeError", f"{corpus['empty']}: empty file")
    assert results["audio_only"] == ("DecodeError", f"{corpus['audio_only']}: no video stream")
    partial = {name for name, r in results.items() if r[0] == "ok" and r[3]}
    assert {"cut_late.faststart", "cut_near_end.faststart", "cut_late.mkv"} <= partial
    assert all(results[f"cut_header.{s}"][0] == "DecodeError" for s in SOURCES)
    assert all(results[f"long_audio.{ext}"][0] == "ok" for ext in ("mkv", "webm", "mp4"))


def test_a_partial_file_is_masked_warned_and_reported_by_the_dataset(corpus, tmp_path):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    (root / "a" / "cut.mkv").write_bytes(corpus["cut_late.mkv"].read_bytes())
    (root / "a" / "whole.mkv").write_bytes(corpus["mkv"].read_bytes())
    spec = ClipSpec(num_frames=8, sampling="segment", crop_size=32, mean=(0.0,) * 3, std=(1 / 255,) * 3)
    data = VideoFolder(root, spec=spec, train=False)
    with pytest.warns(UserWarning, match=r"cut.mkv: partial: decoding stopped at 1.37 s of 3.00 s"):
        batch = collate([data[0], data[1]])
    assert batch["mask"][0].tolist() == [True] * 4 + [False] * 4 and batch["mask"][1].all()
    assert batch["bad"] == [(str(root / "a" / "cut.mkv"), "partial: decoding stopped at 1.37 s of 3.00 s")]
    with pytest.raises(DecodeError, match="partial"):
        VideoFolder(root, spec=spec, train=False, on_error="raise")[0]


def test_a_bug_in_a_transform_surfaces_instead_of_becoming_a_bad_file(corpus, tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "v.mkv").write_bytes(corpus["mkv"].read_bytes())
    data = VideoFolder(tmp_path, spec=ClipSpec(num_frames=4, crop_size=32, scale=(32, 40)), train=True)

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in a transform")

    monkeypatch.setattr(data.train_tf, "__call__", broken, raising=False)
    monkeypatch.setattr(type(data.train_tf), "__call__", broken)
    with pytest.raises(RuntimeError, match="a bug in a transform"):
        data[0]


def test_each_returned_frame_is_converted_once(tmp_path, monkeypatch):
    write_video(tmp_path / "v.mp4", 30, fps=30)
    calls = []
    real = decode_module.frame_rgb
    monkeypatch.setattr(decode_module, "frame_rgb", lambda frame, side: (calls.append(frame.pts), real(frame, side))[1])
    with open_video(tmp_path / "v.mp4") as reader:  # 8 times, 3 distinct frames (two repeated, four past the end)
        frames, valid = reader.frames_at([0.0, 0.0, 0.5, 0.5, 2.0, 3.0, 4.0, 5.0])
    assert len(calls) == 3 and frames.shape[0] == 8 and valid.tolist() == [True] * 4 + [False] * 4


def test_predict_reports_a_partial_file(corpus, tmp_path, capsys):
    import json

    import timesformer as tf
    from timesformer.cli import main

    tf.save_pretrained(
        tf.create_model("timesformer_tiny", depth=1, dim=32, heads=2, dim_head=16, labels=tuple("abcdefghijkl")),
        tmp_path / "ckpt",
    )
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(corpus["cut_late.mkv"].read_bytes())
    assert (
        main(
            [
                "predict",
                str(cut),
                str(corpus["mkv"]),
                "--checkpoint",
                str(tmp_path / "ckpt"),
                "--json",
                "--sampling-rate",
                "4",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["partial"] == "decoding stopped at 1.37 s of 3.00 s" and "partial" not in rows[1]


def test_training_reports_partial_files_in_bad_files(corpus, tmp_path):
    from timesformer.engine.loop import fit

    from ..engine.helpers import metrics, tiny_run

    root = tmp_path / "data"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for k in range(2):
            (root / cls / f"{k}.mkv").write_bytes(corpus["mkv"].read_bytes())
    (root / "a" / "cut.mkv").write_bytes(corpus["cut_late.mkv"].read_bytes())
    cfg = tiny_run(
        tmp_path,
        data=dict(
            kind="folder", train=str(root), num_frames=8, sampling="segment", crop_size=16, scale=[16, 16], flip=False
        ),
        optim=dict(batch_size=5, epochs=1),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(cfg)
    epoch = [r for r in metrics(tmp_path / "run") if "train_loss" in r][0]
    assert epoch["bad_files"] == epoch["partial_files"] == [str(root / "a" / "cut.mkv")]
    assert torch.isfinite(torch.tensor(epoch["train_loss"]))
