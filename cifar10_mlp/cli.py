"""Command-line entry points (the only module that knows Hydra's @hydra.main)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# TensorFlow's C++ start-up chatter hides the run's own output; set before it is imported
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from cifar10_mlp import runner, schema  # noqa: E402
from cifar10_mlp.data import DataError  # noqa: E402

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")

schema.register_configs()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def train(cfg: DictConfig) -> float:
    """`cifar10-mlp`: train, evaluate and log one run; returns validation accuracy."""
    try:
        summary = runner.run(cfg, HydraConfig.get().overrides.task)
    except (schema.ConfigError, DataError) as err:
        sys.exit(f"cifar10-mlp: error: {err}")
    print(
        f"\ntest accuracy {summary.test_accuracy:.4f} | macro F1 {summary.test_f1_macro:.4f} | "
        f"validation accuracy {summary.val_accuracy:.4f}\n"
        f"MLflow run {summary.run_id}\n"
        f"see it with: mlflow ui --backend-store-uri {summary.tracking_uri}"
    )
    return summary.val_accuracy
