import pytest

from timesformer.engine.config import load_run_config


def test_yaml_and_overrides(tmp_path):
    (tmp_path / "cfg.yaml").write_text(
        "name: k400\nmodel: timesformer_base\noptim:\n  lr: 0.005\n  epochs: 15\n"
        "data:\n  kind: folder\n  train: /data/k400/train\n"
    )
    cfg = load_run_config(tmp_path / "cfg.yaml", ["optim.lr=3e-4", "model_args.attention=joint", "data.flip=false"])
    assert cfg.optim.lr == 3e-4 and cfg.optim.epochs == 15 and cfg.model_args == {"attention": "joint"}
    assert cfg.data.flip is False and cfg.data.train == "/data/k400/train"


@pytest.mark.parametrize(
    "override,match",
    [
        (["optim.lrate=1"], r"unknown config key optim.lrate; known in optim: \[.*'lr'"),
        (["optim.epochs=ten"], r"config key optim.epochs: expected int; got 'ten' \(str\)"),
        (["optim.epochs=1.5"], r"config key optim.epochs: expected int; got 1.5"),
        (["batch=3"], r"unknown config key batch"),
        (["optim"], r"must be key=value"),
        (["data.flip=maybe"], r"config key data.flip: expected bool; got 'maybe'"),
    ],
)
def test_bad_keys_and_types(override, match):
    with pytest.raises(ValueError, match=match):
        load_run_config(None, override)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ValueError, match="no such config file"):
        load_run_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("optim: [unclosed\n")
    with pytest.raises(ValueError, match="bad.yaml: not valid YAML"):
        load_run_config(tmp_path / "bad.yaml")


def test_shipped_configs_load():
    from pathlib import Path

    for path in sorted((Path(__file__).parents[2] / "configs").glob("*.yaml")):
        cfg = load_run_config(path)
        assert cfg.name == path.stem
