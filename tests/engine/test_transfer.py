"""demo --transfer at a tiny size: every method runs at equal steps, trains what it should (the probe the head,
LoRA its adapters and the head), and the table, results and plot are written; the pretrained model is reused."""

import json

import torch

from timesformer.cli import main
from timesformer.engine.transfer import METHODS, run_transfer
from timesformer.pretrained import read_state


def test_transfer_runs_every_method_at_equal_steps_and_reuses_the_pretrained_model(tmp_path, capsys):
    results = run_transfer(str(tmp_path), seed=0, shots=2, steps=3, pretrain_steps=2, val_clips=60)
    assert list(results) == list(METHODS)
    assert {r["steps"] for r in results.values()} == {3}
    trainable = {m: r["trainable"] for m, r in results.items()}
    assert trainable["linear probe"] < trainable["LoRA (rank 8)"] < trainable["full fine-tune"]
    assert trainable["full fine-tune"] == trainable["scratch"] == trainable["full fine-tune + recipe"]
    assert all(r["videos"] == 60 and 0 <= r["top1"] <= 1 for r in results.values())
    saved = json.loads((tmp_path / "transfer" / "results.json").read_text())
    assert saved["methods"]["linear probe"]["top1"] == results["linear probe"]["top1"]
    assert (tmp_path / "transfer" / "transfer.png").stat().st_size > 0
    assert "| linear probe |" in (tmp_path / "transfer" / "table.md").read_text()

    first = read_state(tmp_path / "transfer" / "full_fine-tune" / "last" / "model.safetensors")
    pretrained = tmp_path / "pretrain_0_2" / "last" / "model.safetensors"
    stamp = pretrained.stat().st_mtime_ns
    argv = ["demo", "--transfer", "--steps", "2", "--shots", "2", "--transfer-steps", "3", "--val-clips", "60"]
    argv += ["--out", str(tmp_path)]
    assert main(argv) == 0
    assert pretrained.stat().st_mtime_ns == stamp  # reused, not trained again
    out = capsys.readouterr().out
    assert "| full fine-tune + recipe |" in out and "chance: top-1 16.7 %" in out
    second = read_state(tmp_path / "transfer" / "full_fine-tune" / "last" / "model.safetensors")
    assert all(torch.equal(first[k], second[k]) for k in first)  # the same seed: the same weights
    again = json.loads((tmp_path / "transfer" / "results.json").read_text())["methods"]
    for method in METHODS:  # the same seed: the same table
        assert (again[method]["top1"], again[method]["direction"]) == (
            saved["methods"][method]["top1"],
            saved["methods"][method]["direction"],
        )
