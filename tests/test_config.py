import re
import sys
from dataclasses import is_dataclass
from pathlib import Path

import pytest
from conftest import CONFIG_DIR, compose_config
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf

from cifar10_mlp.config.allowed import Flag, rules_of
from cifar10_mlp.config.schema import ConfigError, validate

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
    cfg = compose_config([f"{group}={option}"],
                         config_name="eda_config" if group == "eda" else "config")
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


# group options that bring keys the default composition lacks
VARIANTS = [[], ["optimizer=sgd"], ["optimizer=adam"], ["optimizer=lion"], ["preprocess=zca"],
            ["preprocess=pca"], ["schedule=step"], ["schedule=constant"],
            ["augment=flip_translate"], ["augment=crop_flip"]]


def leaves(node, prefix=""):
    """(dotted key, rule) of every leaf of a composed config node, by its schema's rules."""
    rules = rules_of(OmegaConf.get_type(node)) if is_dataclass(OmegaConf.get_type(node)) else {}
    for key in node:
        if isinstance(node[key], DictConfig):
            yield from leaves(node[key], f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", rules.get(key)


def as_override_text(value):
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(as_override_text(v) for v in value) + "]"
    return str(value)


def bad_leaves():
    """Each key with a value its rule refuses, under the first variant that has the key
    (true/false keys have no such value: composing refuses anything else)."""
    found = {}
    for variant in VARIANTS:
        for key, rule in leaves(compose_config(variant)):
            if key not in found and rule is not None and not isinstance(rule, Flag):
                found[key] = (key, as_override_text(rule.bad_value), tuple(variant))
    return sorted(found.values())


BAD_LEAVES = bad_leaves()


def test_every_leaf_of_every_composition_declares_what_it_allows():
    undeclared = {key for variant in VARIANTS for key, rule in leaves(compose_config(variant))
                  if rule is None}
    assert not undeclared
    walked = {key for key, _, _ in BAD_LEAVES}  # the walk reaches into every variant
    assert {"optimizer.momentum", "optimizer.beta_2", "preprocess.epsilon", "schedule.gamma",
            "schedule.final_lr_fraction", "trainer.early_stopping.monitor", "seed",
            "tracking.uri"} <= walked


def test_the_eda_settings_are_cifar10_mlp_eda_s_alone():
    """A training run carries no eda.* keys (nor logs them); cifar10-mlp-eda's config is the
    training config, presets included, plus eda.*, each declaring what it allows."""
    assert "eda" not in compose_config([])
    eda_cfg = compose_config(["experiment=best_mlp"], config_name="eda_config")
    assert eda_cfg.model == compose_config(["experiment=best_mlp"]).model
    assert {key for key, rule in leaves(eda_cfg) if rule is None} == set()
    assert {key for key, _ in leaves(eda_cfg.eda, "eda.")} >= {"eda.tsne_samples",
                                                                "eda.out_dir"}


EDA_BAD_LEAVES = sorted(
    (key, as_override_text(rule.bad_value))
    for key, rule in leaves(compose_config([], config_name="eda_config").eda, "eda.")
    if not isinstance(rule, Flag))


@pytest.mark.parametrize("key, bad", EDA_BAD_LEAVES, ids=[k for k, _ in EDA_BAD_LEAVES])
def test_every_eda_key_refuses_a_bad_value_in_one_line_before_any_work(key, bad, tmp_path,
                                                                       monkeypatch):
    from cifar10_mlp import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cifar10-mlp-eda", f"{key}={bad}",
                                      "hydra.output_subdir=null", "hydra/job_logging=none",
                                      "hydra/hydra_logging=none"])
    with pytest.raises(SystemExit) as stopped:
        cli.eda()
    message = str(stopped.value.code)
    assert message.startswith(f"cifar10-mlp-eda: error: {key}=") and "\n" not in message
    assert " is not allowed: expected " in message
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("key, bad, variant", BAD_LEAVES, ids=[k for k, _, _ in BAD_LEAVES])
def test_every_key_refuses_a_bad_value_in_one_line_before_any_work(key, bad, variant, tmp_path,
                                                                   monkeypatch, capsys):
    """The real entry point, in this process: exit 1 with `cifar10-mlp: error: <key>=...`."""
    from cifar10_mlp import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cifar10-mlp", *variant, f"{key}={bad}",
                                      "hydra.output_subdir=null", "hydra/job_logging=none",
                                      "hydra/hydra_logging=none"])
    with pytest.raises(SystemExit) as stopped:
        cli.train()
    message = str(stopped.value.code)
    assert message.startswith(f"cifar10-mlp: error: {key}=") and "\n" not in message
    assert " is not allowed: expected " in message
    assert not (tmp_path / "mlflow.db").exists()  # nothing was opened or written


def test_a_warm_up_as_long_as_training_is_allowed_but_says_what_happens(caplog):
    validate(compose_config(["trainer.epochs=2", "schedule.warmup_epochs=2"]))
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith("schedule.warmup_epochs=2 is not shorter than trainer.epochs=2: "
                              "the learning rate rises for the whole run")
    caplog.clear()
    validate(compose_config(["debug=fast"]))  # a one-epoch smoke run has no warm-up
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_the_early_stopping_direction_must_fit_its_metric():
    with pytest.raises(ConfigError, match="trainer.early_stopping.mode='max' is not allowed: "
                                          "expected min for trainer.early_stopping.monitor="
                                          "val_loss"):
        validate(compose_config(["trainer.early_stopping.monitor=val_loss"]))
    validate(compose_config(["trainer.early_stopping.monitor=val_loss",
                             "trainer.early_stopping.mode=min"]))


def test_a_registered_model_needs_a_logged_model():
    with pytest.raises(ConfigError, match="tracking.registered_model='x' is not allowed: "
                                          "expected null when tracking.log_model=false"):
        validate(compose_config(["tracking.registered_model=x", "tracking.log_model=false"]))
    validate(compose_config(["tracking.registered_model=my mlp"]))


@pytest.mark.parametrize("override, message", [
    ("tracking.registered_model=team/mlp", "expected null or a name without '/' or ':'"),
    ("tracking.registered_alias=latest", "expected letters, digits, '_' and '-', other than "
                                         "'latest' and v<number>"),
    ("tracking.registered_alias=V3", "other than 'latest' and v<number>"),
    ("evaluation.tta=rotate", "evaluation.tta='rotate' is not allowed: expected one of none, "
                              "flip, flip_shift"),
    ("evaluation.tta_shift=9", "evaluation.tta_shift=9 is not allowed: expected an integer "
                               "from 1 to 8 (pixels)"),
])
def test_registry_names_and_tta_are_checked_before_training(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(compose_config([override]))


def test_residual_blocks_need_one_width():
    with pytest.raises(ConfigError, match=re.escape(
            "model.hidden=[64, 32] is not allowed: expected one width repeated")):
        validate(compose_config(["model.block=residual", "model.hidden=[64,32]"]))
    validate(compose_config(["model.block=residual", "model.hidden=[64,64,64]"]))


@pytest.mark.parametrize("uri", ["http://alice:s3cret@mlflow.example.org:5000",
                                 "postgresql://mlflow:s3cret@127.0.0.1/mlflow"])
def test_a_tracking_uri_with_credentials_is_refused_without_echoing_them(uri):
    with pytest.raises(ConfigError) as refused:
        validate(compose_config([f"tracking.uri={uri}"]))
    message = str(refused.value)
    assert "s3cret" not in message and "alice" not in message and "\n" not in message
    assert message.startswith("tracking.uri='") and "***@" in message
    assert "MLFLOW_TRACKING_USERNAME" in message and "~/.mlflow/credentials" in message
