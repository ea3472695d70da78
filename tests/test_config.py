from pathlib import Path

import pytest
from conftest import CONFIG_DIR, compose_config
from hydra.errors import ConfigCompositionException

from cifar10_mlp.schema import ConfigError, validate

GROUP_OPTIONS = sorted(
    (group.name, option.stem)
    for group in Path(CONFIG_DIR).iterdir() if group.is_dir()
    for option in group.glob("*.yaml")
)


def test_every_group_has_options():
    groups = {group for group, _ in GROUP_OPTIONS}
    assert {"data", "preprocess", "model", "optimizer", "schedule", "trainer", "tracking",
            "experiment", "debug"} <= groups


@pytest.mark.parametrize("group, option", GROUP_OPTIONS)
def test_every_option_of_every_group_composes_and_validates(group, option):
    cfg = compose_config([f"{group}={option}"])
    validate(cfg)
    if group in {"preprocess", "optimizer", "schedule"}:
        assert cfg[group].name == option


def test_default_is_the_full_ten_class_mlp():
    cfg = compose_config([])
    assert cfg.data.classes is None
    assert list(cfg.model.hidden) == [1024, 512, 256]
    assert cfg.tracking.uri == "sqlite:///mlflow.db"


def test_seed_notebook_reproduces_the_notebook_settings():
    cfg = compose_config(["experiment=seed_notebook"])
    assert list(cfg.data.classes) == ["airplane", "automobile", "bird"]
    assert cfg.preprocess.name == "scale"
    assert list(cfg.model.hidden) == [512, 256] and cfg.model.activation == "relu"
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.momentum,
            cfg.optimizer.nesterov) == ("sgd", 0.001, 0.9, True)
    assert (cfg.trainer.batch_size, cfg.trainer.epochs) == (100, 50)


def test_command_line_overrides_win_over_presets():
    cfg = compose_config(["experiment=seed_notebook", "trainer.epochs=3",
                          "model.hidden=[2048,1024]"])
    assert cfg.trainer.epochs == 3 and list(cfg.model.hidden) == [2048, 1024]


@pytest.mark.parametrize("override", [
    "model.hidden=[wide]",        # wrong type
    "trainer.epochs=many",
    "model.depth=3",              # unknown key
    "optimizer=sgd",              # ok alone ...
])
def test_schema_rejects_wrong_types_and_unknown_keys(override):
    if override == "optimizer=sgd":
        # ... but a key of another optimizer is unknown to sgd's schema
        with pytest.raises(ConfigCompositionException):
            compose_config([override, "optimizer.beta_1=0.5"])
        return
    with pytest.raises(ConfigCompositionException):
        compose_config([override])


@pytest.mark.parametrize("override, message", [
    ("model.dropout=1.0", "model.dropout=1.0 is not allowed: expected a value in [0, 1)"),
    ("model.hidden=[512,0]", "model.hidden=[512, 0] is not allowed"),
    ("optimizer.lr=0", "optimizer.lr=0.0 is not allowed: expected a number > 0"),
    ("data.classes=[airplane,unicorn]", "data.classes='unicorn' is not allowed"),
    ("data.val_size=1.5", "data.val_size=1.5 is not allowed"),
    ("trainer.batch_size=0", "trainer.batch_size=0 is not allowed"),
    ("preprocess.name=sharpen", "preprocess.name='sharpen' is not allowed: expected one of"),
    ("optimizer.name=lbfgs", "optimizer.name='lbfgs' is not allowed: expected one of sgd, adam"),
    ("schedule.name=triangle", "schedule.name='triangle' is not allowed: expected one of"),
    ("trainer.epochs=0", "trainer.epochs=0 is not allowed: expected an integer >= 1"),
    ("data.val_size=1.0", "data.val_size=1.0 is not allowed: expected a fraction strictly"),
    ("augment.translate=0.7", "augment.translate=0.7 is not allowed"),
])
def test_validate_names_key_value_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError) as err:
        validate(compose_config([override]))
    assert message in str(err.value)
