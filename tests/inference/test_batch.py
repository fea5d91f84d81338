"""Sharded, resumable batch inference: ``extract`` / ``predict --format shards``, one process and under torchrun."""

import json
import time
from pathlib import Path

import pytest
import torch

import timesformer as tf
from timesformer.cli import main
from timesformer.data import list_videos
from timesformer.inference import Predictor
from timesformer.inference.batch import SHARD, ShardedJob, read_shards, video_id, videos_from, weights_digest

from ..conftest import labelled_tiny_model
from ..data.videos import write_video
from ..engine.helpers import cli, run, start, stop, torchrun, wait_for

pytest.importorskip("av")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    tf.save_pretrained(labelled_tiny_model(), root)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Eleven videos under two folders (two share a name), a truncated one, a text file posing as a video, and a
    list naming them all plus a file that does not exist."""
    root = tmp_path_factory.mktemp("data")
    (root / "a").mkdir()
    (root / "b").mkdir()
    for i in range(5):
        write_video(root / "a" / f"v{i}.mp4", 20 + 7 * i, size=48)
        write_video(root / "b" / f"w{i}.mp4", 30 + 5 * i, size=48)
    write_video(root / "b" / "v0.mp4", 33, size=48)  # the same name as a/v0.mp4
    write_video(root / "f.mp4", 90, size=48, gop=10, container_options={"movflags": "faststart"})
    raw = (root / "f.mp4").read_bytes()
    (root / "b" / "truncated.mp4").write_bytes(raw[: int(len(raw) * 0.6)])  # its index first: opens, then breaks
    (root / "b" / "notes.mp4").write_text("this is not a video")
    names = [f"a/v{i}.mp4" for i in range(5)] + ["b/notes.mp4", "b/v0.mp4", "missing.mp4", "b/truncated.mp4"]
    names += [f"b/w{i}.mp4" for i in range(5)]
    (root / "list.txt").write_text("\n".join(names) + "\n")
    return root


def extract(ckpt, data, out, *extra):
    return ["extract", "--list", str(data / "list.txt"), "--checkpoint", str(ckpt), "--out", str(out), *extra]


def check_index_agrees_with_shards(out, n_videos: int, kinds=("pooled",)) -> dict:
    """Every video of the list once in the index; a bad one has no tensors, the others every kind, each in the
    shard the index names (and nowhere else)."""
    from safetensors import safe_open

    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert len(index) == n_videos and len({e["id"] for e in index}) == n_videos
    found = []  # (key, shard) over every shard file: a video in two files would show twice
    for shard in sorted(out.glob("shard-*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            found += [(key, int(shard.name[6:11])) for key in f.keys()]
    keys = dict(found)
    assert len(keys) == len(found), "a tensor is in more than one shard file"
    for e in index:
        names = [e["id"]] + [f"{e['id']}::{kind}" for kind in kinds if kind != "pooled"]
        if e["status"] == "bad":
            assert e["error"] and not any(n in keys for n in names), e
        else:
            assert all(keys.get(n) == e["shard"] for n in names), e
    assert len(keys) == sum(e["status"] != "bad" for e in index) * len(kinds)
    assert not list(out.glob(".*.tmp"))
    return {e["id"]: e for e in index}


def test_list_formats_for_inference(tmp_path):
    (tmp_path / "my clip.mp4").write_bytes(b"")
    (tmp_path / "plain.txt").write_text("my clip.mp4\nsub/a.mp4\nframes_folder\n\n")
    (tmp_path / "labelled.txt").write_text("x.mp4 3\ny.avi 0,2\n")
    (tmp_path / "k.csv").write_text("label,youtube_id,time_start,time_end,split\nabseiling,abc,10,20,val\n")
    (tmp_path / "p.csv").write_text("path\nq.mp4\n")
    assert list_videos(tmp_path / "plain.txt") == [
        (tmp_path / "my clip.mp4", None),
        (tmp_path / "sub/a.mp4", None),
        (tmp_path / "frames_folder", None),
    ]
    assert list_videos(tmp_path / "labelled.txt") == [(tmp_path / "x.mp4", "3"), (tmp_path / "y.avi", "0,2")]
    assert list_videos(tmp_path / "k.csv", root="/data") == [(Path("/data/abc_000010_000020.mp4"), "abseiling")]
    assert list_videos(tmp_path / "p.csv") == [(tmp_path / "q.mp4", None)]
    (tmp_path / "bad.csv").write_text("label,youtube_id,time_start,time_end,split\nabseiling,abc,ten,20,val\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: time_start/time_end must be numbers"):
        list_videos(tmp_path / "bad.csv")


def test_two_processes_give_one_process_results_and_the_index_agrees_with_the_shards(ckpt, data, tmp_path):
    """torchrun (gloo, 2 ranks, 2 decoding workers each) over a list with a bad, a missing and a truncated file
    and two files of one name: the same features as one process, and as ``Predictor.features`` per file."""
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["--tokens", "frames", "--shard-size", "3", "--batch-size", "2"]
    assert main(extract(ckpt, data, one, "--format", "shards", "--workers", "0", *args)) == 0
    proc = run(torchrun(2, *extract(ckpt, data, two, *args)), timeout=240)  # shards: torchrun's default format
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "14 videos in 5 shard(s): 11 ok, 1 partial, 2 bad" in proc.stdout
    assert "rank 0: 3 shard(s) written" in proc.stderr and "rank 1: 2 shard(s) written" in proc.stderr

    kinds = ("pooled", "frames")
    index_one, index_two = (
        check_index_agrees_with_shards(one, 14, kinds),
        check_index_agrees_with_shards(two, 14, kinds),
    )
    assert index_one == index_two
    assert index_one["missing.mp4"]["status"] == "bad" and "no such file" in index_one["missing.mp4"]["error"]
    assert index_one["b/notes.mp4"]["status"] == "bad" and "not a readable video" in index_one["b/notes.mp4"]["error"]
    assert index_one["b/truncated.mp4"]["status"] == "partial"
    assert {"a/v0.mp4", "b/v0.mp4"} <= index_one.keys()  # one name, two ids

    results_one, results_two = read_shards(one), read_shards(two)
    predictor = Predictor(tf.load_pretrained(ckpt))
    for vid, entry in results_one.items():
        assert results_two[vid]["tensors"].keys() == entry["tensors"].keys()
        for kind, tensor in entry["tensors"].items():
            torch.testing.assert_close(results_two[vid]["tensors"][kind], tensor, atol=1e-5, rtol=1e-5)
        if entry["status"] != "bad":
            for kind in kinds:
                expected = predictor.features(data / vid, kind)
                torch.testing.assert_close(entry["tensors"][kind], expected, atol=1e-5, rtol=1e-5)


def test_a_killed_job_rerun_ends_with_every_video_exactly_once(ckpt, data, tmp_path):
    """SIGKILL once the first shard is written, then the same command: the shards written are kept (not redone),
    the rest are done, and the results equal an uninterrupted run's."""
    out = tmp_path / "out"
    command = extract(ckpt, data, out, "--format", "shards", "--shard-size", "2", "--workers", "0")
    proc = start(cli(*command, "--batch-size", "1"))
    try:
        wait_for(lambda: (out / SHARD.format(0)).exists(), 120, "the first shard", proc)
    finally:
        stop(proc)
    written = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.safetensors")}
    assert 1 <= len(written) < 7 and not (out / "index.jsonl").exists(), f"killed too late: {sorted(written)}"

    proc = run(cli(*command), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{7 - len(written)} shard(s) written, {len(written)} done before" in proc.stderr
    assert all(out.joinpath(name).stat().st_mtime_ns == t for name, t in written.items())  # kept, not redone
    index = check_index_agrees_with_shards(out, 14)

    clean = tmp_path / "clean"
    assert main(extract(ckpt, data, clean, "--format", "shards", "--shard-size", "2", "--workers", "0")) == 0
    assert index == check_index_agrees_with_shards(clean, 14)
    resumed, expected = read_shards(out), read_shards(clean)
    for vid, entry in expected.items():
        for kind, tensor in entry["tensors"].items():
            torch.testing.assert_close(resumed[vid]["tensors"][kind], tensor, atol=1e-5, rtol=1e-5)


def test_predict_shards_hold_the_probabilities_and_top_k_of_predict(ckpt, data, tmp_path, capsys):
    out = tmp_path / "pred"
    args = ["predict", "--list", str(data / "list.txt"), "--checkpoint", str(ckpt), "--out", str(out)]
    assert main([*args, "--format", "shards", "--views", "2x1", "--topk", "2", "--workers", "0"]) == 0
    index = check_index_agrees_with_shards(out, 14)
    results = read_shards(out)
    predictor = Predictor(tf.load_pretrained(ckpt), clips=2)
    for vid in ("a/v3.mp4", "b/truncated.mp4"):
        expected = predictor.predict(data / vid, topk=2)
        torch.testing.assert_close(
            results[vid]["tensors"]["probs"], predictor.logits(data / vid).softmax(-1), atol=1e-5, rtol=1e-5
        )
        assert [t["class"] for t in index[vid]["top"]] == [t["class"] for t in expected["top"]]
        assert index[vid]["top"][0]["prob"] == pytest.approx(expected["top"][0]["prob"], abs=1e-5)
    assert index["b/truncated.mp4"]["error"] == expected["partial"]


def test_a_rerun_with_other_settings_is_refused_and_nothing_is_lost(ckpt, data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(extract(ckpt, data, out, "--format", "shards", "--workers", "0")) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(extract(ckpt, data, out, "--format", "shards", "--views", "2x1")) == 2
    assert "holds results of another job (views: '1x1' there, '2x1' now)" in capsys.readouterr().err
    other = tmp_path / "other"
    model = labelled_tiny_model()
    with torch.no_grad():
        model.head.weight.add_(0.1)  # other weights, the same network
    tf.save_pretrained(model, other)
    assert main(extract(other, data, out, "--format", "shards")) == 2
    assert "another job (weights:" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    assert main(extract(ckpt, data, tmp_path / "int8", "--format", "shards", "--precision", "int8")) == 0
    assert json.loads((tmp_path / "int8" / "job.json").read_text())["int8"] == "int8-dynamic"  # not static's numbers


def test_a_list_that_grew_keeps_its_earlier_shards_and_one_that_shrank_drops_the_rest(ckpt, data, tmp_path, capsys):
    lines = (data / "list.txt").read_text().splitlines()
    short = tmp_path / "short.txt"
    short.write_text("".join(f"{data / line}\n" for line in lines[:5]))
    out = tmp_path / "out"
    command = ["extract", "--list", str(short), "--checkpoint", str(ckpt), "--out", str(out), "--format", "shards"]
    assert main([*command, "--shard-size", "2", "--workers", "0"]) == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    time.sleep(0.01)

    # grown, and interrupted: the old index, which no longer tells the whole job, is gone
    short.write_text("".join(f"{data / line}\n" for line in lines[:7]))
    model = tf.load_pretrained(ckpt)
    predictor = Predictor(model)
    videos = videos_from([(data / line, video_id(data / line, tmp_path), None) for line in lines[:7]])

    def interrupt(done, total):
        if done:
            raise KeyboardInterrupt

    identity = {"weights": weights_digest(model)}  # as the CLI records it
    job = ShardedJob(predictor, videos, out, task="extract", identity=identity, shard_size=2, batch_size=1, workers=0)
    with pytest.raises(KeyboardInterrupt):
        job.run(interrupt)
    assert not (out / "index.jsonl").exists()
    with pytest.raises(ValueError, match="no index.jsonl; the job has not finished"):
        read_shards(out)

    assert main([*command, "--shard-size", "2", "--workers", "0"]) == 0
    assert "2 shard(s) written, 2 done before" in capsys.readouterr().err  # shard 2 held 1 video, now 2; shard 3 new
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    assert all(after[k] == v for k, v in stamps.items() if k != SHARD.format(2))
    check_index_agrees_with_shards(out, 7)

    short.write_text("".join(f"{data / line}\n" for line in lines[:3]))  # shrunk: shards 2 and 3 go
    assert main([*command, "--shard-size", "2", "--workers", "0"]) == 0
    assert sorted(p.name for p in out.glob("shard-*")) == [SHARD.format(0), SHARD.format(1)]
    check_index_agrees_with_shards(out, 3)


def test_a_damaged_shard_or_another_root_is_done_again(ckpt, data, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--format", "shards", "--shard-size", "5", "--workers", "0", "--tokens", "patches", "frames"]
    assert main(extract(ckpt, data, out, *args)) == 0
    shard = out / SHARD.format(1)
    shard.write_bytes(shard.read_bytes()[:100])
    capsys.readouterr()
    args[-2:] = ["frames", "patches"]  # the same outputs in another order: the same job
    assert main(extract(ckpt, data, out, *args)) == 0
    err = capsys.readouterr().err  # the CLI logs the library's warnings there
    assert "1 shard(s) written, 2 done before" in err and f"{shard} can't be read" in err
    check_index_agrees_with_shards(out, 14, ("pooled", "frames", "patches"))

    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(data, copy)  # the same relative names under another --root: other videos, so done again
    command = extract(ckpt, data, out, *args)
    command[command.index("--list") + 1] = str(copy / "list.txt")
    assert main(command) == 0
    assert "3 shard(s) written, 0 done before" in capsys.readouterr().err
    assert all(e["path"].startswith(str(copy)) for e in read_shards(out).values())


def test_static_int8_jobs_record_what_the_cpu_decided():
    """Static int8's numbers depend on the CPU (7-bit activations without VNNI, fp32 between the linears without
    oneDNN bf16): a job resumed on another kind of CPU differs in job.json and is refused, never mixed. What a CPU
    with both records is what every static int8 job recorded before."""
    from types import SimpleNamespace

    from timesformer.inference.batch import job_identity

    model = labelled_tiny_model()

    def identity(**fast):
        predictor = SimpleNamespace(precision="int8", model=SimpleNamespace(method="int8-static", **fast))
        return job_identity(model, predictor, ["a.mp4", "b.mp4"], calibration_clips=2)

    vnni_bf16 = identity(reduce_range=False, bf16_between=True)
    assert set(vnni_bf16) == {"weights", "int8", "calibration"}
    assert identity(reduce_range=True, bf16_between=True) == {**vnni_bf16, "activations": "7-bit"}
    assert identity(reduce_range=True, bf16_between=False) == {
        **vnni_bf16,
        "activations": "7-bit",
        "between_linears": "fp32",
    }


def test_sharded_options_name_what_they_need(ckpt, data, tmp_path, capsys, monkeypatch):
    assert main(["predict", "--list", str(data / "list.txt"), "--checkpoint", str(ckpt), "--format", "shards"]) == 2
    assert "--format shards writes shard files and index.jsonl into a folder: pass --out DIR" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(extract(ckpt, data, tmp_path / "x", "--format", "npy")) == 2
    assert "under torchrun the processes share the work as --format shards" in capsys.readouterr().err
    monkeypatch.delenv("WORLD_SIZE")
    args = ["predict", str(data / "a"), "--checkpoint", str(ckpt), "--out", str(tmp_path), "--format", "shards"]
    assert main([*args, "--window", "1"]) == 2
    assert "--window timelines are written per file" in capsys.readouterr().err
    assert main(["extract", "--checkpoint", str(ckpt), "--out", str(tmp_path)]) == 2
    assert "name videos, folders, globs or --list" in capsys.readouterr().err
    assert main(extract(ckpt, data, tmp_path / "y", "--format", "npy", "--shard-size", "4")) == 2
    assert "--shard-size set(s) up --format shards jobs; got --format npy" in capsys.readouterr().err
    assert (
        main(["predict", str(data / "a"), "--checkpoint", str(ckpt), "--out", "p", "--format", "shards", "--json"]) == 2
    )
    assert "--json prints results; --format shards writes them to --out" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # here, a/v0.mp4 is another file than the list's a/v0.mp4
    args = ["extract", "a/v0.mp4", "--list", str(data / "list.txt"), "--checkpoint", str(ckpt), "--out", "t"]
    assert main([*args, "--format", "shards"]) == 2
    assert f"two videos would share the id 'a/v0.mp4': a/v0.mp4 and {data / 'a/v0.mp4'}" in capsys.readouterr().err
