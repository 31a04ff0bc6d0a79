import pytest

from emotune.config import RunConfig, TrainConfig, field_help
from emotune.errors import ConfigError


def test_yaml_round_trip(tmp_path):
    cfg = RunConfig().override(["train.lr=0.002", "method.name=full", "data.max_train_samples=10"])
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    again = RunConfig.from_yaml(path)
    assert again == cfg
    assert again.train.lr == 0.002 and again.method == {"name": "full"} and again.data.max_train_samples == 10


def test_method_as_plain_string_and_options(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: full\ntrain: {batch_size: 4}\n")
    cfg = RunConfig.from_yaml(path)
    assert cfg.method == {"name": "full"} and cfg.train.batch_size == 4
    cfg = cfg.override(["method.r=4"])
    assert cfg.method == {"name": "full", "r": 4}


@pytest.mark.parametrize("text, message", [("trian: {}\n", "unknown config section"),
                                           ("train: {lr_rate: 1}\n", "unknown train option"),
                                           ("train: [\n", "not valid YAML")])
def test_bad_config_files(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_yaml(path)


@pytest.mark.parametrize("override", ["lr=1", "train.lr", "nosuch.x=1"])
def test_bad_overrides(override):
    with pytest.raises(ConfigError):
        RunConfig().override([override])


def test_every_field_has_help():
    assert all(field_help(TrainConfig).values())


def test_numbers_are_coerced_by_field_type(tmp_path):
    cfg = RunConfig().override(["train.lr=2e-5", "train.max_epochs=3", "train.patience=null"])
    assert cfg.train.lr == 2e-5 and isinstance(cfg.train.lr, float)
    assert cfg.train.max_epochs == 3.0 and cfg.train.patience is None
    path = tmp_path / "c.yaml"
    path.write_text("train: {lr: 3e-4, batch_size: '8'}\n")
    cfg = RunConfig.from_yaml(path)
    assert cfg.train.lr == 3e-4 and cfg.train.batch_size == 8
    with pytest.raises(ConfigError, match="train.lr must be a number"):
        RunConfig().override(["train.lr=fast"])
    with pytest.raises(ConfigError, match="must be true or false"):
        RunConfig().override(["train.checkpoint=maybe"])
