"""The demo as a reproduction: equal steps on the same clips, a table that is a function of the seed, the
paper's Table 1 beside ours, and the task preview."""

import dataclasses
import json
import shutil

import pytest
import torch

from timesformer.cli import main
from timesformer.data import SyntheticMotion
from timesformer.data.synthetic import CLASSES
from timesformer.engine import demo


def _seen_clips(monkeypatch) -> list:
    seen = []
    get = SyntheticMotion.__getitem__

    def record(self, i):
        if self.split == "train":
            seen.append(i)
        return get(self, i)

    monkeypatch.setattr(SyntheticMotion, "__getitem__", record)
    return seen


def _losses(run_folder) -> list:
    rows = map(json.loads, (run_folder / "metrics.jsonl").read_text().splitlines())
    return [r.get("loss", r.get("train_loss")) for r in rows if "loss" in r or "train_loss" in r]


def test_every_scheme_trains_the_same_steps_on_the_same_clips_in_the_same_order(tmp_path, monkeypatch):
    seen = _seen_clips(monkeypatch)
    config = demo.demo_config  # clips drawn in this process, where the recorder sees them

    def in_process(*args, **kwargs):
        cfg = config(*args, **kwargs)
        return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, workers=0))

    monkeypatch.setattr(demo, "demo_config", in_process)
    results = demo.run_demo(str(tmp_path), schemes=("divided", "space"), steps=3, val_clips=24)
    assert [r["steps"] for r in results.values()] == [3, 3]
    divided, space = seen[: len(seen) // 2], seen[len(seen) // 2 :]
    assert len(divided) == 3 * 32 and divided == space and len(set(divided)) == len(divided)
    # the two runs' settings differ in the attention scheme alone
    configs = [config(a, out="x").__dict__ for a in ("divided", "space")]
    differing = {k for k in configs[0] if configs[0][k] != configs[1][k]}
    assert differing == {"name", "model_args"}
    assert configs[0]["model_args"] == dict(demo.MODEL_ARGS, attention="divided")
    assert configs[1]["model_args"] == dict(demo.MODEL_ARGS, attention="space")
    assert configs[0]["optim"].max_minutes == 0  # no clock anywhere in the schedule


def test_the_same_seed_gives_the_same_table_and_another_seed_another(tmp_path):
    def table(out, seed):
        results = demo.run_demo(str(tmp_path / out), schemes=("divided", "space"), steps=4, seed=seed, val_clips=48)
        kept = {a: {k: v for k, v in r.items() if k not in ("train_s", "s_per_step")} for a, r in results.items()}
        return kept, {a: _losses(tmp_path / out / a) for a in results}

    first, again, other = table("a", 0), table("b", 0), table("c", 1)
    assert first == again  # results, confusion matrices and every logged loss, exactly
    assert first[1] != other[1] and first[0] != other[0]


def test_demo_cli_prints_the_tables_and_writes_the_figures(tmp_path, capsys):
    assert main(["demo", "--steps", "2", "--val-clips", "24", "--out", str(tmp_path / "demo")]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "| divided space-time (T+S) | 2 |" in out and "| space-only (S) | 2 |" in out
    assert "| rotate_cw/rotate_ccw |" in out and "worst pair" in out
    assert "2/2" in captured.err  # the bars count the fixed steps
    for name in ("loss_curves.png", "confusion_divided.png", "confusion_space.png", "table.md"):
        assert (tmp_path / "demo" / name).stat().st_size > 0
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved["steps"] == 2 and set(saved["schemes"]) == {"divided", "space"}
    assert saved["schemes"]["divided"]["videos"] == 24
    assert saved["schemes"]["divided"]["s_per_step"] > 0
    assert set(saved["schemes"]["divided"]["pairs"]) == {f"{CLASSES[a]}/{CLASSES[b]}" for a, b in demo.REVERSED_PAIRS}


def test_schemes_all_puts_the_papers_table_1_beside_ours(tmp_path, capsys):
    assert main(["demo", "--schemes", "all", "--steps", "1", "--val-clips", "24", "--out", str(tmp_path / "all")]) == 0
    out = capsys.readouterr().out
    assert "paper: SSv2 top-1" in out and "| divided space-time (T+S) |" in out and "| 59.5 |" in out
    assert (tmp_path / "all" / "schemes.png").stat().st_size > 0
    saved = json.loads((tmp_path / "all" / "results.json").read_text())["schemes"]
    assert list(saved) == list(demo.SCHEMES)
    flops = {s: saved[s]["gflops"] for s in saved}
    assert flops["space"] < flops["joint"] < flops["divided"] < flops["sparse"] < flops["axial"]
    params = {s: saved[s]["params_m"] for s in saved}
    assert params["space"] == params["joint"] < params["divided"] == params["sparse"] < params["axial"]


def test_seeds_sweep_gives_mean_and_sd_and_reads_finished_seeds(tmp_path, monkeypatch, capsys):
    out = tmp_path / "sweep"
    argv = ["demo", "--seeds", "0,1", "--steps", "2", "--val-clips", "24", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "direction, seeds 0/1" in printed and "| divided space-time (T+S) |" in printed and " ± " in printed
    saved = json.loads((out / "results.json").read_text())
    per_seed = [json.loads((out / f"seed{s}" / "results.json").read_text())["schemes"] for s in (0, 1)]
    assert saved["per_seed"] == {"0": per_seed[0], "1": per_seed[1]}
    for scheme in ("divided", "space"):
        values = torch.tensor([r[scheme]["direction"] for r in per_seed], dtype=torch.float64)
        got = saved["mean_sd"][scheme]["direction"]
        assert got["mean"] == pytest.approx(values.mean().item()) and got["sd"] == pytest.approx(values.std().item())
        pair = saved["mean_sd"][scheme]["pairs"]["rotate_cw/rotate_ccw"]
        assert pair["mean"] == pytest.approx(sum(r[scheme]["pairs"]["rotate_cw/rotate_ccw"] for r in per_seed) / 2)
    assert (out / "table.md").read_text().startswith("| scheme | params |")

    def no_training(*args, **kwargs):
        raise AssertionError("a finished seed was trained again")

    monkeypatch.setattr(demo, "fit", no_training)
    assert main(argv) == 0  # both seeds are read back
    assert json.loads((out / "results.json").read_text()) == saved
    with pytest.raises(AssertionError, match="trained again"):  # other settings: not the same runs
        demo.run_seeds(str(out), schemes=("divided", "space"), steps=3, seeds=(0,), val_clips=24)
    shutil.copytree(out / "seed0", out / "seed7")  # another seed's folder under this seed's name
    with pytest.raises(AssertionError, match="trained again"):
        demo.run_seeds(str(out), schemes=("divided", "space"), steps=2, seeds=(7,), val_clips=24)
    record = json.loads((out / "seed1" / "results.json").read_text())
    record["recipes"]["divided"]["optim"]["lr"] = 3e-4  # a run of another recipe
    (out / "seed1" / "results.json").write_text(json.dumps(record))
    with pytest.raises(AssertionError, match="trained again"):
        demo.run_seeds(str(out), schemes=("divided", "space"), steps=2, seeds=(1,), val_clips=24)


def test_seed_stats_are_the_mean_and_the_sample_sd():
    runs = [
        {"direction": d, "top1": t, "top1_pairs": t, "s_per_step": 0.1, "pairs": {"a/b": d}}
        for d, t in ((0.9, 0.5), (1.0, 0.7), (0.95, 0.6))
    ]
    stats = demo.seed_stats(runs)
    assert stats["direction"]["mean"] == pytest.approx(0.95) and stats["direction"]["sd"] == pytest.approx(0.05)
    assert stats["top1"]["sd"] == pytest.approx(0.1) and stats["pairs"]["a/b"]["mean"] == pytest.approx(0.95)
    assert demo.seed_stats(runs[:1])["direction"] == {"mean": 0.9, "sd": 0.0}
    table = demo.format_seed_tables({0: {"divided": dict(runs[0], params_m=0.6, gflops=0.08)}})
    assert "| divided space-time (T+S) | 0.60M | 0.080 | 90.0% ± 0.0% | 90.0% |" in table


def test_a_loader_worker_draws_the_same_clips_in_the_same_order(tmp_path, monkeypatch):
    """The demo draws clips in a worker process where workers fork: every logged loss equals the in-process run's."""
    config = demo.demo_config
    losses = {}
    for workers in (0, 1):

        def with_workers(*args, workers=workers, **kwargs):
            cfg = config(*args, **kwargs)
            return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, workers=workers))

        monkeypatch.setattr(demo, "demo_config", with_workers)
        demo.run_demo(str(tmp_path / str(workers)), schemes=("divided",), steps=3, val_clips=24)
        losses[workers] = _losses(tmp_path / str(workers) / "divided")
    assert losses[0] == losses[1] and len(losses[0]) >= 1


def test_pos_emb_learned_trains_the_papers_space_and_time_tables(tmp_path):
    cfg = demo.demo_config("joint", out=str(tmp_path), pos_emb="learned")
    assert cfg.model_args == dict(demo.MODEL_ARGS, attention="joint", pos_emb="learned")
    results = demo.run_demo(str(tmp_path), schemes=("joint",), steps=2, val_clips=24, pos_emb="learned")
    assert results["joint"]["steps"] == 2
    assert json.loads((tmp_path / "results.json").read_text())["pos_emb"] == "learned"
    from safetensors.torch import load_file

    assert json.loads((tmp_path / "joint" / "last" / "config.json").read_text())["config"]["pos_emb"] == "learned"
    weights = load_file(tmp_path / "joint" / "last" / "model.safetensors")
    assert weights["time_embed"].shape == (1, 8, demo.MODEL_ARGS["dim"])


def test_seeds_refuses_a_seed_or_transfer_beside_it(capsys):
    assert main(["demo", "--seeds", "0,1", "--seed", "3"]) == 2
    assert "--seeds runs the schemes once per seed; it takes no --seed" in capsys.readouterr().err
    assert main(["demo", "--seeds", "0,1", "--transfer"]) == 2


@pytest.mark.parametrize("bad", ["0,0", "a,b", ","])
def test_demo_rejects_bad_seed_lists(bad, capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--seeds", bad])
    assert "--seeds: must be distinct whole numbers separated by commas" in capsys.readouterr().err


@pytest.mark.slow
def test_base_model_parameters_and_flops_match_the_papers_table_1():
    """The counts the Table 1 row prints, at the paper's size: parameters within 0.3 M of the paper's for every
    scheme, and divided's 8x224 forward near the paper's 0.59 TFLOPs over 3 views (0.196 per view)."""
    import timesformer as tf

    for scheme, (paper_params, _, _) in demo.PAPER_TABLE1.items():
        model = tf.create_model("timesformer_base", attention=scheme, num_classes=400)
        assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - paper_params) < 0.3, scheme
    assert 180 < demo.gflops_per_clip(tf.create_model("timesformer_base", num_classes=400)) < 200


@pytest.mark.parametrize("bad", ["divided,divided", "space,temporal", ""])
def test_demo_rejects_unknown_or_repeated_schemes(bad, capsys):
    assert main(["demo", "--schemes", bad, "--steps", "1"]) == 2
    assert "schemes: 'all' or distinct names from space,joint,divided,sparse,axial; got " in capsys.readouterr().err


def test_synth_preview_png_shows_one_clip_per_class_frame_by_frame(tmp_path, capsys):
    from PIL import Image

    from timesformer.viz.preview import _LABEL_WIDTH

    assert main(["synth", "--preview", str(tmp_path / "p.png"), "--seed", "3"]) == 0
    image = torch.from_numpy(__import__("numpy").array(Image.open(tmp_path / "p.png").convert("RGB")))
    scale, gap, size = 4, 2, 32 * 4
    assert image.shape == (12 * (size + gap), _LABEL_WIDTH + 8 * (size + gap), 3)
    data = SyntheticMotion(12, seed=3)
    for row in (0, 5, 11):  # move_left, rotate_ccw, still_cross: the dataset's clip, pixel for pixel
        video, label = data.clip(row)
        assert label == row
        for frame in (0, 7):
            y, x = row * (size + gap), _LABEL_WIDTH + frame * (size + gap)
            tile = image[y : y + size : scale, x : x + size : scale].permute(2, 0, 1)
            assert torch.equal(tile, video[frame])


def test_synth_preview_gif_animates_every_frame(tmp_path):
    from PIL import Image

    assert main(["synth", "--preview", str(tmp_path / "p.gif"), "--frames", "6", "--size", "24"]) == 0
    with Image.open(tmp_path / "p.gif") as gif:
        assert gif.n_frames == 6 and gif.info["loop"] == 0
    assert not list(tmp_path.glob(".*"))  # written through a temporary name, nothing left beside it


def test_synth_preview_names_what_it_needs(tmp_path, capsys):
    assert main(["synth", "--preview", str(tmp_path / "p.mp4")]) == 2
    assert "preview file must end in .png or .gif; got 'p.mp4'" in capsys.readouterr().err
    assert main(["synth", "--num", "3"]) == 2
    assert "--out DIR --num N, or a preview with --preview" in capsys.readouterr().err
    assert main(["synth", "--preview", str(tmp_path / "p.png"), "--out", str(tmp_path)]) == 2
    assert "either a preview (--preview FILE) or clips (--out DIR --num N), not both" in capsys.readouterr().err
    from timesformer.viz import write_preview

    with pytest.raises(
        ValueError,
        match=r"uint8 t 3 H W of one shape; got shapes \[\(2, 3, 8, 8\)\], dtypes "
        r"\['torch.float32'\]",
    ):
        write_preview([("a", torch.rand(2, 3, 8, 8))], tmp_path / "p.png")
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob(".*"))
