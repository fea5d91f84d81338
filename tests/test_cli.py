"""The command line: demo, convert, errors and exit codes."""

import json
import subprocess
import sys

import torch

import timesformer as tf
from timesformer.cli import main

from .conftest import small_model


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
    proc = subprocess.run(
        [sys.executable, "-m", "timesformer", "convert", str(tmp_path / "junk.pth"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
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


def _one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("timesformer ")
    return err[0]


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    """Bad options, and a checkpoint that contradicts them (the model's own check, said again as a user error)."""
    tf.save_pretrained(small_model(labels=tuple("abcde")), tmp_path / "ckpt")
    assert main(["predict", "x.mp4", "--checkpoint", str(tmp_path / "ckpt"), "--views", "1x2"]) == 2
    assert "--views needs clips >= 1 and crops 1 or 3; got '1x2'" in _one_error_line(capsys)
    assert main(["convert", str(tmp_path / "ckpt"), str(tmp_path / "out"), "--heads", "3"]) == 2
    assert "cannot load strictly" in _one_error_line(capsys)
    assert main(["synth", "--out", str(tmp_path / "s"), "--num", "1", "--frames", "1"]) == 2
    assert "need num_frames >= 2" in _one_error_line(capsys)


BUG = """
import sys
import timesformer.data.synthetic as synthetic
from timesformer.cli import main

def write_synthetic(*args, **kwargs):
    raise ValueError("boom")  # a bug in the library, not bad input

synthetic.write_synthetic = write_synthetic
sys.exit(main(["synth", "--out", sys.argv[1], "--num", "1"]))
"""


def test_a_bug_keeps_its_traceback_and_exits_1(tmp_path):
    """Only a user error is one line and exit 2: a ValueError from a bug is not one, and shows where it happened."""
    proc = subprocess.run([sys.executable, "-c", BUG, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr and "in write_synthetic" in proc.stderr
    assert "\nValueError: boom\n" in proc.stderr and "error: boom" not in proc.stderr


def test_train_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["train", "optim.lrate=1"]) == 2
    assert "unknown config key optim.lrate" in _one_error_line(capsys)
    assert main(["train", "optim.epochs=ten"]) == 2
    assert "config key optim.epochs: expected int; got 'ten'" in _one_error_line(capsys)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    assert main(["train", "data.kind=folder", f"data.train={tmp_path / 'empty'}", f"out={tmp_path}"]) == 2
    assert "no videos found" in _one_error_line(capsys)
    tiny = [
        "model_args.image_size=16",
        "model_args.patch_size=4",
        "model_args.dim=32",
        "model_args.depth=1",
        "model_args.heads=2",
        "model_args.dim_head=16",
        "data.synthetic_train=32",
        "data.synthetic_val=12",
        "data.synthetic_size=16",
        "optim.batch_size=16",
        "optim.epochs=1",
        "optim.precision=fp32",
        f"out={tmp_path}",
    ]
    assert main(["train", *tiny, "model_args.num_classes=5"]) == 2
    assert "contradicts the data, which has 12 classes" in _one_error_line(capsys)
    assert main(["train", *tiny, "name=r"]) == 0
    capsys.readouterr()
    assert main(["train", *tiny, "name=r"]) == 2  # never overwritten silently
    assert "already exists; pass --resume" in _one_error_line(capsys)
    assert main(["train", "--resume", str(tmp_path / "r"), "model_args.dim=48", "model_args.heads=3"]) == 2
    assert "model_args.dim: the run has 32, this resume asks for 48" in _one_error_line(capsys)


def test_unknown_optimizer_or_schedule_is_a_user_error_before_the_run_starts(tmp_path, capsys):
    """Checked when the config loads: one line naming the bad value, exit 2, and no run folder made."""
    assert main(["train", "optim.optimizer=foo", f"out={tmp_path}"]) == 2
    assert "optim.optimizer" in (line := _one_error_line(capsys)) and "'foo'" in line and "'adamw'" in line
    assert main(["train", "optim.schedule=linear", f"out={tmp_path}"]) == 2  # not only once warmup is over
    assert "optim.schedule" in (line := _one_error_line(capsys)) and "'linear'" in line and "'cosine'" in line
    assert not list(tmp_path.iterdir())


def test_serve_without_its_extra_is_a_user_error(monkeypatch, capsys):
    """A missing dependency of ``timesformer[serve]``: one line saying how to install it, exit 2."""
    for name in [m for m in sys.modules if m == "timesformer.serve" or m.startswith("timesformer.serve.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn: ModuleNotFoundError
    assert main(["serve", "--checkpoint", "nowhere"]) == 2
    line = _one_error_line(capsys)
    assert "the serve extra is not installed" in line and "pip install 'timesformer[serve]'" in line


def test_eval_multi_view_report_and_confusion(tmp_path, capsys):
    from timesformer.data import write_synthetic

    root = write_synthetic(tmp_path / "files", 24, size=32, num_frames=8)
    model = tf.create_model(
        "timesformer_tiny",
        num_frames=8,
        image_size=32,
        depth=1,
        dim=32,
        heads=2,
        dim_head=16,
        labels=tuple(sorted(__import__("timesformer").data.CLASSES)),
    )
    tf.save_pretrained(model, tmp_path / "ckpt")
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(tmp_path / "ckpt"),
                "--data",
                str(root),
                "--views",
                "2x3",
                "--sampling-rate",
                "1",
                "--fps",
                "8",
                "--out",
                str(tmp_path / "report"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["videos"] == 24 and report["views"] == "2x3" and 0 <= report["top1"] <= report["top5"] <= 1
    assert len(report["per_class"]) == 12 and sum(map(sum, report["confusion"])) == 24
    assert (tmp_path / "report" / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["eval", "--checkpoint", str(tmp_path / "ckpt"), "--data", str(root), "--views", "2x2"]) == 2
    assert "crops 1 or 3" in _one_error_line(capsys)


def test_resume_continues_the_run_as_it_was_configured(tmp_path, capsys):
    import yaml

    tiny = [
        "model_args.image_size=16",
        "model_args.patch_size=4",
        "model_args.dim=32",
        "model_args.depth=1",
        "model_args.heads=2",
        "model_args.dim_head=16",
        "data.synthetic_train=32",
        "data.synthetic_val=12",
        "data.synthetic_size=16",
        "optim.batch_size=16",
        "optim.epochs=1",
        "optim.lr=3e-3",
        "optim.precision=fp32",
        f"out={tmp_path}",
        "name=r",
    ]
    run = tmp_path / "r"
    assert main(["train", *tiny]) == 0
    capsys.readouterr()
    # no --config, no model args: the run's own config.yaml, with the one override printed
    assert main(["train", "--resume", str(run), "optim.epochs=2"]) == 0
    shown = capsys.readouterr()
    assert "override optim.epochs: 1 -> 2" in shown.out and "resuming" in shown.err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 3e-3 and saved["optim"]["epochs"] == 2 and saved["model_args"]["dim"] == 32
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if "top1" in r] == [1, 2]
    assert main(["train", "--resume", str(run), "data.synthetic_size=32"]) == 2
    assert "data.synthetic_size: the run has 16, this resume asks for 32" in _one_error_line(capsys)
    assert main(["train", "--resume", str(run), "--config", "x.yaml"]) == 2
    assert "--resume continues the run with its own config.yaml" in _one_error_line(capsys)


def test_eval_pairs_classes_by_name_in_the_checkpoints_order(tmp_path, capsys):
    """The checkpoint knows the classes in SyntheticMotion's order; the folder sorts them by name."""
    from timesformer.data import CLASSES, write_synthetic

    root = write_synthetic(tmp_path / "files", 14, size=32, num_frames=8)  # 2 clips of move_left, move_right
    model = tf.create_model("timesformer_tiny", depth=1, dim=32, heads=2, dim_head=16, labels=CLASSES)
    tf.save_pretrained(model, tmp_path / "ckpt")
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(tmp_path / "ckpt"),
                "--data",
                str(root),
                "--sampling-rate",
                "1",
                "--fps",
                "8",
                "--out",
                str(tmp_path / "report"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert list(report["per_class"]) == list(CLASSES)
    assert [sum(row) for row in report["confusion"]] == [2, 2] + [1] * 10  # rows in the checkpoint's order
    # a class the checkpoint does not have is an error naming it
    tf.save_pretrained(
        tf.create_model("timesformer_tiny", depth=1, dim=32, heads=2, dim_head=16, num_classes=11, labels=CLASSES[:11]),
        tmp_path / "eleven",
    )
    assert main(["eval", "--checkpoint", str(tmp_path / "eleven"), "--data", str(root)]) == 2
    assert "still_cross" in _one_error_line(capsys)


def test_finetune_and_the_shipped_configs_use_the_official_stochastic_depth(tmp_path, capsys):
    import yaml

    from timesformer.engine.config import load_run_config

    for name in ("k400_divst_8x32", "ssv2_divst_8"):
        assert load_run_config(f"configs/{name}.yaml").model_args["drop_path_rate"] == 0.1
    tf.save_pretrained(small_model(labels=tuple("abcde")), tmp_path / "base")
    tiny = [
        "data.synthetic_train=32",
        "data.synthetic_val=12",
        "data.synthetic_size=32",
        "data.num_frames=4",
        "optim.batch_size=16",
        "optim.epochs=1",
        "optim.precision=fp32",
        f"out={tmp_path}",
    ]
    assert main(["finetune", "--pretrained", str(tmp_path / "base"), *tiny, "name=ft"]) == 0
    assert yaml.safe_load((tmp_path / "ft" / "config.yaml").read_text())["model_args"]["drop_path_rate"] == 0.1
    assert tf.load_pretrained(tmp_path / "ft" / "last").config.drop_path_rate == 0.1
    assert (
        main(["finetune", "--pretrained", str(tmp_path / "base"), *tiny, "name=ft0", "model_args.drop_path_rate=0"])
        == 0
    )
    assert tf.load_pretrained(tmp_path / "ft0" / "last").config.drop_path_rate == 0.0


def test_progress_bar_takes_absolute_counts_and_its_eta_forgets_a_slow_start(monkeypatch):
    """Ten steps in the first 100 s (a model build, a busy machine), then one a second: with 80 steps left, the ETA
    is about 80 s, not the 800 s the average since the start gives."""
    import io
    import re

    import tqdm.std

    from timesformer import cli

    clock = [0.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: clock[0])
    stream = io.StringIO()
    bar = cli.progress_bar(100, "train", stream=stream)
    bar.mininterval = bar.miniters = 0
    clock[0] = 100.0
    bar.advance(10)
    for step in range(11, 21):
        clock[0] += 1.0
        bar.advance(step, postfix="loss 0.5")
    last = stream.getvalue().rsplit("\r", 1)[-1]
    assert last.startswith("train:  20%") and "20/100" in last and "loss 0.5" in last
    minutes, seconds = map(int, re.search(r"<(\d+):(\d+),", last).groups())
    assert 75 <= 60 * minutes + seconds <= 100, last
    bar.advance(20, total=200)  # the training loop learns the total once the data is built
    assert bar.total == 200
    bar.close()


def test_every_shipped_config_loads_and_ssv2_never_flips():
    from pathlib import Path

    from timesformer.engine.config import load_run_config

    configs = {path.stem: load_run_config(path) for path in sorted(Path("configs").glob("*.yaml"))}
    assert len(configs) >= 4
    ssv2 = configs["ssv2_divst_8"].data
    assert ssv2.kind == "ssv2" and ssv2.flip is False and ssv2.sampling == "segment"  # left/right is the label
    ucf = configs["ucf101_finetune"]
    assert (ucf.data.kind, ucf.data.randaugment_n, ucf.data.randaugment_m, ucf.data.mixup) == ("ucf101", 2, 9, 0.8)
    assert (ucf.optim.layer_decay, ucf.data.erase_prob) == (0.75, 0.25)
