"""MLflow tracking: the only module that imports mlflow.

``start_run`` opens a run and records what the run depends on (config, data,
code version); the returned :class:`TrackedRun` records what it produced.
A run whose body raises ends FAILED with the error as a tag and a traceback file.
"""

from __future__ import annotations

import subprocess
import tempfile
import traceback
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import keras
import mlflow
import numpy as np
from matplotlib.figure import Figure
from mlflow.models import infer_signature
from omegaconf import DictConfig, OmegaConf

from cifar10_mlp.data import DataSplit
from cifar10_mlp.evaluate import Evaluation

MAX_TAG_LENGTH = 5000


class EpochLogger(keras.callbacks.Callback):
    """Logs every Keras epoch metric (loss, accuracy, val_*, lr) at step = epoch number."""

    def __init__(self, run_id: str):
        super().__init__()
        self.run_id = run_id

    def on_epoch_end(self, epoch, logs=None):
        metrics = {name: float(value) for name, value in (logs or {}).items()}
        mlflow.log_metrics(metrics, step=epoch + 1, run_id=self.run_id)


class TrackedRun:
    """An open MLflow run: a Keras callback for epochs and loggers for the results."""

    def __init__(self, run_id: str, tracking_uri: str):
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self.epoch_logger = EpochLogger(run_id)

    def log_result(self, evaluation: Evaluation, figures: dict[str, Figure],
                   extra_metrics: dict[str, float]) -> None:
        """Test metrics, the classification report, the confusion matrix and figures."""
        mlflow.log_metrics({**evaluation.metrics(), **extra_metrics})
        mlflow.log_dict(evaluation.report, "classification_report.json")
        mlflow.log_dict({"class_names": list(evaluation.class_names),
                         "counts": evaluation.confusion.tolist(),
                         "row_normalized": evaluation.confusion_normalized.tolist()},
                        "confusion_matrix.json")
        for file_name, figure in figures.items():
            mlflow.log_figure(figure, f"plots/{file_name}")

    def log_model(self, model: keras.Model, input_example: np.ndarray) -> None:
        """The Keras model, with a signature and an input example of raw uint8 images."""
        # mlflow.keras.log_model(input_example=...) writes the example before it creates
        # the model folder and fails (mlflow/mlflow#16183), so save into a folder of ours
        # and log that folder as the run's `model` artifact.
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model"
            path.mkdir()
            mlflow.keras.save_model(
                model,
                str(path),
                signature=infer_signature(input_example, model.predict(input_example, verbose=0)),
                input_example=input_example,
                # explicit requirements: inferring them costs ~10 s a run
                pip_requirements=[f"{pkg}=={version(pkg)}" for pkg in ("tensorflow", "keras")],
            )
            mlflow.log_artifacts(str(path), "model", run_id=self.run_id)


@contextmanager
def start_run(cfg: DictConfig, overrides: Sequence[str], split: DataSplit
              ) -> Iterator[TrackedRun]:
    """Open a run in ``cfg.tracking``'s store and log the config, data and code version."""
    mlflow.set_tracking_uri(cfg.tracking.uri)
    mlflow.set_experiment(cfg.tracking.experiment)
    tags = {"overrides": " ".join(overrides) or "(defaults)", **_git_tags()}
    with mlflow.start_run(run_name=cfg.tracking.run_name, tags=tags) as active:
        mlflow.log_params({**flatten(OmegaConf.to_container(cfg, resolve=True)),
                           "split.n_train": len(split.y_train), "split.n_val": len(split.y_val),
                           "split.n_test": len(split.y_test)})
        mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        with warnings.catch_warnings():  # a local path matches two equivalent source types
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_numpy(split.x_train, targets=split.y_train,
                                             source=split.source, name="cifar10",
                                             digest=split.digest[:16])
        mlflow.log_input(dataset, context="training")
        try:
            yield TrackedRun(active.info.run_id, absolute_uri(cfg.tracking.uri))
        except BaseException as err:
            mlflow.set_tag("error", f"{type(err).__name__}: {err}"[:MAX_TAG_LENGTH])
            mlflow.log_text(traceback.format_exc(), "error.txt")
            raise


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """Nested config to dotted keys, e.g. {"model.hidden": "[1024, 512]"}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def absolute_uri(uri: str) -> str:
    """A relative SQLite URI made absolute, so it names the same store from anywhere."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def _git_tags() -> dict[str, str]:
    """The commit of the code that runs, when it runs from a git checkout."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        return {"git_commit": git("rev-parse", "HEAD"),
                "git_dirty": str(bool(git("status", "--porcelain", "--untracked-files=no")))}
    except (OSError, subprocess.SubprocessError):
        return {}
