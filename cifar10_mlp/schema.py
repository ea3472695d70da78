"""Typed schemas for every config group, registered with Hydra's ConfigStore.

The YAML files under ``conf/`` hold the values; these dataclasses hold the types
and the allowed keys, so a typo or a wrong type fails when the config is
composed, before any data is read or TensorFlow is imported. Fields without a
default must be given by the YAML, which keeps the YAML the single source of
truth. Checks that types cannot express live in :func:`validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from cifar10_mlp.errors import UserError

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


class ConfigError(UserError, ValueError):
    """A config value that is not allowed; the message names key, value and what is allowed."""


@dataclass
class DataConfig:
    path: str | None = MISSING
    cache_dir: str | None = MISSING
    val_size: float = MISSING
    classes: list[str] | None = MISSING
    train_limit: int | None = MISSING


@dataclass
class PreprocessConfig:
    name: str = MISSING


@dataclass
class ZCAConfig(PreprocessConfig):
    epsilon: float = MISSING


@dataclass
class AugmentConfig:
    horizontal_flip: bool = MISSING
    translate: float = MISSING


@dataclass
class ModelConfig:
    hidden: list[int] = MISSING
    activation: str = MISSING
    dropout: float = MISSING
    batch_norm: bool = MISSING
    weight_decay: float = MISSING
    initializer: str = MISSING


@dataclass
class SGDConfig:
    name: str = MISSING
    lr: float = MISSING
    momentum: float = MISSING
    nesterov: bool = MISSING


@dataclass
class AdamConfig:
    name: str = MISSING
    lr: float = MISSING
    beta_1: float = MISSING
    beta_2: float = MISSING
    epsilon: float = MISSING


@dataclass
class AdamWConfig(AdamConfig):
    weight_decay: float = MISSING


@dataclass
class ScheduleConfig:
    name: str = MISSING
    warmup_epochs: int = MISSING


@dataclass
class CosineScheduleConfig(ScheduleConfig):
    final_lr_fraction: float = MISSING


@dataclass
class StepScheduleConfig(ScheduleConfig):
    step_epochs: int = MISSING
    gamma: float = MISSING


@dataclass
class EarlyStoppingConfig:
    monitor: str = MISSING
    mode: str = MISSING
    patience: int | None = MISSING


@dataclass
class TrainerConfig:
    epochs: int = MISSING
    batch_size: int = MISSING
    label_smoothing: float = MISSING
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    jit_compile: bool = MISSING
    threads: int | None = MISSING
    checkpoint_dir: str = MISSING
    resume: bool = MISSING
    verbose: int = MISSING


@dataclass
class EvaluationConfig:
    misclassified_grid: int = MISSING


@dataclass
class EdaConfig:
    samples_per_class: int = MISSING
    projection_samples: int = MISSING
    tsne_samples: int = MISSING
    experiment: str = MISSING
    out_dir: str = MISSING


@dataclass
class TrackingConfig:
    uri: str = MISSING
    experiment: str = MISSING
    run_name: str | None = MISSING
    log_model: bool = MISSING


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
    eda: EdaConfig = MISSING
    seed: int = MISSING


def register_configs() -> None:
    """Register the schemas; group YAML files extend them through their defaults lists."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="data", name="data_schema", node=DataConfig)
    cs.store(group="preprocess", name="preprocess_schema", node=PreprocessConfig)
    cs.store(group="preprocess", name="zca_schema", node=ZCAConfig)
    cs.store(group="augment", name="augment_schema", node=AugmentConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="optimizer", name="sgd_schema", node=SGDConfig)
    cs.store(group="optimizer", name="adam_schema", node=AdamConfig)
    cs.store(group="optimizer", name="adamw_schema", node=AdamWConfig)
    cs.store(group="schedule", name="schedule_schema", node=ScheduleConfig)
    cs.store(group="schedule", name="cosine_schema", node=CosineScheduleConfig)
    cs.store(group="schedule", name="step_schema", node=StepScheduleConfig)
    cs.store(group="trainer", name="trainer_schema", node=TrainerConfig)
    cs.store(group="evaluation", name="evaluation_schema", node=EvaluationConfig)
    cs.store(group="tracking", name="tracking_schema", node=TrackingConfig)
    cs.store(group="eda", name="eda_schema", node=EdaConfig)


PREPROCESS_NAMES = ("scale", "standardize", "pixel_standardize", "zca")
OPTIMIZER_NAMES = ("sgd", "adam", "adamw")
SCHEDULE_NAMES = ("constant", "cosine", "step")
ACTIVATIONS = ("relu", "gelu", "elu", "selu", "swish", "tanh", "sigmoid", "leaky_relu", "linear")
INITIALIZERS = ("glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_normal")


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: expected {allowed}")


def validate(cfg: DictConfig) -> None:
    """Check the values that types alone cannot; raise ConfigError naming the first bad key."""
    _require(0 < cfg.data.val_size < 1, "data.val_size", cfg.data.val_size,
             "a fraction strictly between 0 and 1")
    if cfg.data.classes is not None:
        for name in cfg.data.classes:
            _require(name in CIFAR10_CLASSES, "data.classes", name,
                     f"CIFAR-10 class names: {', '.join(CIFAR10_CLASSES)}")
        _require(len(set(cfg.data.classes)) >= 2, "data.classes", list(cfg.data.classes),
                 "at least two distinct class names")
    if cfg.data.train_limit is not None:
        _require(cfg.data.train_limit >= 2, "data.train_limit", cfg.data.train_limit,
                 "null or an integer >= 2")
    _require(cfg.preprocess.name in PREPROCESS_NAMES, "preprocess.name", cfg.preprocess.name,
             f"one of {', '.join(PREPROCESS_NAMES)}")
    _require(0 <= cfg.augment.translate < 0.5, "augment.translate", cfg.augment.translate,
             "a fraction of the image size in [0, 0.5)")
    _require(len(cfg.model.hidden) >= 1 and all(w >= 1 for w in cfg.model.hidden),
             "model.hidden", list(cfg.model.hidden), "a non-empty list of positive integers")
    _require(cfg.model.activation in ACTIVATIONS, "model.activation", cfg.model.activation,
             f"one of {', '.join(ACTIVATIONS)}")
    _require(cfg.model.initializer in INITIALIZERS, "model.initializer", cfg.model.initializer,
             f"one of {', '.join(INITIALIZERS)}")
    _require(0 <= cfg.model.dropout < 1, "model.dropout", cfg.model.dropout, "a value in [0, 1)")
    _require(cfg.model.weight_decay >= 0, "model.weight_decay", cfg.model.weight_decay, ">= 0")
    _require(cfg.optimizer.name in OPTIMIZER_NAMES, "optimizer.name", cfg.optimizer.name,
             f"one of {', '.join(OPTIMIZER_NAMES)}")
    _require(cfg.optimizer.lr > 0, "optimizer.lr", cfg.optimizer.lr, "a number > 0")
    _require(cfg.schedule.name in SCHEDULE_NAMES, "schedule.name", cfg.schedule.name,
             f"one of {', '.join(SCHEDULE_NAMES)}")
    _require(cfg.schedule.warmup_epochs >= 0, "schedule.warmup_epochs",
             cfg.schedule.warmup_epochs, "an integer >= 0")
    _require(cfg.trainer.epochs >= 1, "trainer.epochs", cfg.trainer.epochs, "an integer >= 1")
    _require(cfg.trainer.batch_size >= 1, "trainer.batch_size", cfg.trainer.batch_size,
             "an integer >= 1")
    _require(cfg.trainer.threads is None or cfg.trainer.threads >= 1, "trainer.threads",
             cfg.trainer.threads, "null or an integer >= 1")
    _require(0 <= cfg.trainer.label_smoothing < 1, "trainer.label_smoothing",
             cfg.trainer.label_smoothing, "a value in [0, 1)")
    _require(cfg.trainer.early_stopping.mode in ("min", "max"), "trainer.early_stopping.mode",
             cfg.trainer.early_stopping.mode, "min or max")
