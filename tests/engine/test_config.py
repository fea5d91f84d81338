import pytest

from timesformer.engine.config import RunError, load_run_config, run_config_for
from timesformer.errors import UserError


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
        (["optim.optimizer=adam"], r"optim.optimizer must be 'adamw' or 'sgd'; got 'adam'"),
        (["optim.schedule=linear"], r"optim.schedule must be 'cosine' or 'constant'; got 'linear'"),
        (["data.decoder=decord"], r"data.decoder must be 'pyav' or 'torchcodec'; got 'decord'"),
    ],
)
def test_bad_keys_and_types(override, match):
    with pytest.raises(RunError, match=match):  # a UserError: the CLI's one line and exit 2
        load_run_config(None, override)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ValueError, match="no such config file"):
        load_run_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("optim: [unclosed\n")
    with pytest.raises(ValueError, match="bad.yaml: not valid YAML"):
        load_run_config(tmp_path / "bad.yaml")


def test_run_errors_are_user_errors():
    assert issubclass(RunError, UserError) and issubclass(RunError, ValueError)


def test_run_config_for_a_new_run_a_finetune_and_a_resume(tmp_path):
    cfg, changed = run_config_for(None, ["optim.lr=3e-4"], device="cpu")
    assert cfg.optim.lr == 3e-4 and cfg.optim.device == "cpu" and changed == []
    cfg, _ = run_config_for(None, [], pretrained="base")
    assert cfg.pretrained == "base" and cfg.model_args["drop_path_rate"] == 0.1  # fine-tuning's stochastic depth
    cfg, _ = run_config_for(None, [], pretrained="base", freeze_backbone=True)
    assert cfg.freeze_backbone and "drop_path_rate" not in cfg.model_args  # not for a frozen backbone
    run = tmp_path / "somewhere" / "r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("name: other\nout: elsewhere\noptim:\n  lr: 0.003\n  epochs: 1\n")
    cfg, changed = run_config_for(None, ["optim.epochs=2"], resume=run)
    assert (cfg.out, cfg.name, cfg.optim.lr, cfg.optim.epochs) == (str(run.parent), "r", 3e-3, 2)
    assert changed == [("optim.epochs", 1, 2)]  # the run's own config, the override on top
    with pytest.raises(RunError, match="not --config"):
        run_config_for("x.yaml", [], resume=run)
    with pytest.raises(RunError, match="no config.yaml; --resume takes a run folder"):
        run_config_for(None, [], resume=tmp_path)


def test_shipped_configs_load():
    from pathlib import Path

    for path in sorted((Path(__file__).parents[2] / "configs").glob("*.yaml")):
        cfg = load_run_config(path)
        assert cfg.name == path.stem
