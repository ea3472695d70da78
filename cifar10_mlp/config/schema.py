"""Typed schemas for every config group, registered with Hydra's ConfigStore.

The YAML files under ``conf/`` hold the values; these dataclasses hold the types, the
allowed keys and, for every key, the values it allows (``allowed(rule)``). A typo or a
wrong type fails when the config is composed; a value outside what its key allows fails
in :func:`validate`, before any data is read or TensorFlow is imported. Fields have no
defaults here: the YAML gives every value, which keeps it the single source of truth.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from cifar10_mlp.config.allowed import (
    ConfigError,
    Flag,
    Items,
    OneOf,
    Pattern,
    Range,
    TrackingUri,
    allowed,
    at_least,
    check_node,
    fraction,
    one_of,
    positive,
    refuse,
    text,
)

__all__ = ["ConfigError", "validate", "register_configs", "CIFAR10_CLASSES"]
log = logging.getLogger(__name__)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


PREPROCESS_NAMES = ("scale", "standardize", "pixel_standardize", "zca", "pca")
OPTIMIZER_NAMES = ("sgd", "adam", "adamw", "lion")
SCHEDULE_NAMES = ("constant", "cosine", "step")
ACTIVATIONS = ("relu", "gelu", "elu", "selu", "swish", "tanh", "sigmoid", "leaky_relu", "linear")
TTA_MODES = ("none", "flip", "flip_shift")
BLOCKS = ("dense", "residual")  # model.block
NORMS = ("batch", "layer", "none")  # model.norm
PRECISIONS = ("float32", "mixed_bfloat16")  # model.precision: Keras dtype policies
FLIPS = ("none", "random", "alternating")  # augment.flip  # evaluation.tta: test-time augmentation
INITIALIZERS = ("glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_normal")
# what a run logs per epoch on the validation split, and which way is better
VALIDATION_METRICS = {"val_accuracy": "max", "val_loss": "min"}
TRACKING_SCHEMES = ("sqlite:///", "http://", "https://", "postgresql://", "mysql://", "file:")
# tracking.uri's rule, which the commands' --tracking-uri follows too
TRACKING_URI = TrackingUri(f"a URI starting with {', '.join(TRACKING_SCHEMES)}",
                           prefixes=TRACKING_SCHEMES)


@dataclass
class DataConfig:
    path: str | None = allowed(text(nullable=True))
    cache_dir: str | None = allowed(text(nullable=True))
    val_size: float = allowed(Range("a fraction strictly between 0 and 1", low=0, high=1,
                                    low_open=True, high_open=True))
    classes: list[str] | None = allowed(Items(
        "at least two distinct class names", nullable=True, min_items=2, distinct=True,
        name_item=True,
        item=OneOf(f"CIFAR-10 class names: {', '.join(CIFAR10_CLASSES)}",
                   choices=CIFAR10_CLASSES)))
    train_limit: int | None = allowed(at_least(2, nullable=True))


@dataclass
class PreprocessConfig:
    name: str = allowed(one_of(PREPROCESS_NAMES))


@dataclass
class ZCAConfig(PreprocessConfig):
    epsilon: float = allowed(positive())


@dataclass
class PCAConfig(ZCAConfig):
    components: int = allowed(Range("an integer in [1, 3072]", low=1, high=3072))


@dataclass
class AugmentConfig:
    flip: str = allowed(one_of(FLIPS))
    crop_padding: int = allowed(Range("an integer in [0, 16]", low=0, high=16))
    mixup_alpha: float = allowed(Range(">= 0", low=0))
    cutmix_alpha: float = allowed(Range(">= 0", low=0))
    translate: float = allowed(Range("a fraction of the image size in [0, 0.5)", low=0,
                                     high=0.5, high_open=True))


@dataclass
class ModelConfig:
    hidden: list[int] = allowed(Items("a non-empty list of positive integers",
                                      item=at_least(1)))
    activation: str = allowed(one_of(ACTIVATIONS))
    dropout: float = allowed(fraction())
    block: str = allowed(one_of(BLOCKS))
    expansion: int = allowed(at_least(1))
    norm: str = allowed(one_of(NORMS))
    weight_decay: float = allowed(Range(">= 0", low=0))
    initializer: str = allowed(one_of(INITIALIZERS))
    precision: str = allowed(one_of(PRECISIONS))
    fused_layers: bool = allowed(Flag("true or false"))


@dataclass
class SGDConfig:
    name: str = allowed(one_of(OPTIMIZER_NAMES))
    lr: float = allowed(positive())
    momentum: float = allowed(fraction())
    nesterov: bool = allowed(Flag("true or false"))
    fused: bool = allowed(Flag("true or false"))


@dataclass
class TwoMomentsConfig:
    """An optimizer that keeps two moving averages of the gradient (Adam, Lion)."""

    name: str = allowed(one_of(OPTIMIZER_NAMES))
    lr: float = allowed(positive())
    beta_1: float = allowed(fraction())
    beta_2: float = allowed(fraction())
    fused: bool = allowed(Flag("true or false"))


@dataclass
class AdamConfig(TwoMomentsConfig):
    epsilon: float = allowed(positive())


@dataclass
class AdamWConfig(AdamConfig):
    weight_decay: float = allowed(Range(">= 0", low=0))


@dataclass
class LionConfig(TwoMomentsConfig):
    weight_decay: float = allowed(Range(">= 0", low=0))


@dataclass
class ScheduleConfig:
    name: str = allowed(one_of(SCHEDULE_NAMES))
    warmup_epochs: int = allowed(at_least(0))


@dataclass
class CosineScheduleConfig(ScheduleConfig):
    final_lr_fraction: float = allowed(fraction(high_open=False))


@dataclass
class StepScheduleConfig(ScheduleConfig):
    step_epochs: int = allowed(at_least(1))
    gamma: float = allowed(fraction(low_open=True, high_open=False))


@dataclass
class EarlyStoppingConfig:
    monitor: str = allowed(one_of(VALIDATION_METRICS))
    mode: str = allowed(one_of(("min", "max")))
    patience: int | None = allowed(at_least(1, nullable=True))


@dataclass
class TrainerConfig:
    epochs: int = allowed(at_least(1))
    batch_size: int = allowed(at_least(1))
    label_smoothing: float = allowed(fraction())
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    jit_compile: bool = allowed(Flag("true or false"))
    threads: int | None = allowed(at_least(1, nullable=True))
    checkpoint_dir: str = allowed(text())
    resume: bool = allowed(Flag("true or false"))
    verbose: int = allowed(one_of((0, 1, 2)))


@dataclass
class EvaluationConfig:
    misclassified_grid: int = allowed(at_least(1))
    tta: str = allowed(one_of(TTA_MODES))
    tta_shift: int = allowed(Range("an integer from 1 to 8 (pixels)", low=1, high=8))


@dataclass
class EdaConfig:
    samples_per_class: int = allowed(at_least(1))
    projection_samples: int = allowed(at_least(2))
    tsne_samples: int = allowed(at_least(0))
    experiment: str = allowed(text())
    out_dir: str = allowed(text())


@dataclass
class TrackingConfig:
    uri: str = allowed(TRACKING_URI)
    experiment: str = allowed(text())
    run_name: str | None = allowed(text(nullable=True))
    log_model: bool = allowed(Flag("true or false"))
    # as the Model Registry takes them
    registered_model: str | None = allowed(Pattern(
        "a name without '/' or ':'", nullable=True, regex=r"[^/:]*[^/:\s][^/:]*", refused="a/b"))
    registered_alias: str = allowed(Pattern(
        "letters, digits, '_' and '-', other than 'latest' and v<number>",
        regex=r"(?!(?i:latest)$)(?![vV]\d+$)[\w-]+", refused="v2"))
    lost_after_minutes: float = allowed(positive())


@dataclass
class SweepConfig:
    resume: bool = allowed(Flag("true or false"))
    poll_seconds: float = allowed(positive())


@dataclass
class Config:
    data: DataConfig = MISSING
    preprocess: Any = MISSING
    augment: AugmentConfig = MISSING
    model: ModelConfig = MISSING
    optimizer: Any = MISSING
    schedule: Any = MISSING
    trainer: TrainerConfig = MISSING
    evaluation: EvaluationConfig = MISSING
    tracking: TrackingConfig = MISSING
    sweep: SweepConfig = MISSING
    seed: int = allowed(Range("an integer in [0, 2**32 - 1]", low=0, high=2**32 - 1))
    from_run: str | None = allowed(Pattern(
        "an MLflow run id (32 hex digits)", nullable=True, regex=r"[0-9a-f]{32}",
        refused="run-1"))


@dataclass
class EdaRunConfig(Config):
    """`cifar10-mlp-eda`'s config: a training run's, which decides the data it reports on,
    and the report's own settings."""

    eda: EdaConfig = MISSING


def register_configs() -> None:
    """Register the schemas. Each group's YAML options extend theirs through their defaults
    lists (``- /zca_schema@_here_``); stored outside the groups, so that ``--help`` lists
    only the options a user can choose."""
    cs = ConfigStore.instance()
    for name, schema in (("config_schema", Config), ("data_schema", DataConfig),
                         ("preprocess_schema", PreprocessConfig), ("zca_schema", ZCAConfig),
                         ("pca_schema", PCAConfig),
                         ("augment_schema", AugmentConfig), ("model_schema", ModelConfig),
                         ("sgd_schema", SGDConfig), ("adam_schema", AdamConfig),
                         ("adamw_schema", AdamWConfig), ("lion_schema", LionConfig),
                         ("schedule_schema", ScheduleConfig),
                         ("cosine_schema", CosineScheduleConfig),
                         ("step_schema", StepScheduleConfig), ("trainer_schema", TrainerConfig),
                         ("evaluation_schema", EvaluationConfig),
                         ("tracking_schema", TrackingConfig), ("eda_schema", EdaConfig),
                         ("eda_config_schema", EdaRunConfig)):
        cs.store(name=name, node=schema)


def validate(cfg: DictConfig) -> None:
    """Check every key against what its schema allows, then the rules between keys; raise
    ConfigError naming the first bad key (warnings say what an odd combination does)."""
    check_node(cfg)
    stopping = cfg.trainer.early_stopping
    if stopping.mode != VALIDATION_METRICS[stopping.monitor]:
        raise refuse("trainer.early_stopping.mode", stopping.mode,
                     f"{VALIDATION_METRICS[stopping.monitor]} for "
                     f"trainer.early_stopping.monitor={stopping.monitor}")
    if cfg.model.block == "residual" and len(set(cfg.model.hidden)) > 1:
        raise refuse("model.hidden", list(cfg.model.hidden),
                     "one width repeated (e.g. [512,512,512]) for model.block=residual: "
                     "each block adds its output to its input")
    if cfg.tracking.registered_model is not None and not cfg.tracking.log_model:
        raise refuse("tracking.registered_model", cfg.tracking.registered_model,
                     "null when tracking.log_model=false (there is no model to register)")
    if cfg.schedule.warmup_epochs >= cfg.trainer.epochs:
        log.warning("schedule.warmup_epochs=%d is not shorter than trainer.epochs=%d: the "
                    "learning rate rises for the whole run and never reaches optimizer.lr=%g, "
                    "and the %s schedule never starts", cfg.schedule.warmup_epochs,
                    cfg.trainer.epochs, cfg.optimizer.lr, cfg.schedule.name)
