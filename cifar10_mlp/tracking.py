"""MLflow tracking: the only module that imports mlflow.

``start_run`` opens a run and records what the run depends on (config, data,
code version); the returned :class:`TrackedRun` records what it produced.
A run whose body raises ends FAILED with the error as a tag and a traceback file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
import traceback
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from omegaconf import DictConfig, OmegaConf

from cifar10_mlp.data import DataSplit
from cifar10_mlp.errors import UserError
from cifar10_mlp.evaluate import Evaluation

if TYPE_CHECKING:  # importing Keras (TensorFlow) takes seconds; store checks run before it
    import keras

MAX_TAG_LENGTH = 5000
# versions recorded on every run, so a result can be traced and rerun
TRACED_PACKAGES = ("tensorflow", "keras", "numpy", "scikit-learn", "mlflow", "hydra-core")


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver them.

    A signal that lands inside a store write can leave a SQLite transaction open and
    the database locked, so the run could not even be marked KILLED afterwards.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread receives signals
        return
    held: list[int] = []
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in previous:
        signal.signal(signum, lambda received, frame: held.append(received))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if held:
            signal.raise_signal(held[0])


class TrackedRun:
    """An open MLflow run, with loggers for what training and evaluation produce."""

    def __init__(self, run_id: str, tracking_uri: str):
        self.run_id = run_id
        self.tracking_uri = tracking_uri

    @uninterrupted()
    def log_epoch(self, step: int, metrics: dict[str, float]) -> None:
        """One epoch's metrics (loss, accuracy, val_*, lr) at step = epoch number."""
        mlflow.log_metrics(metrics, step=step, run_id=self.run_id)

    @uninterrupted()
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

    @uninterrupted()
    def log_metrics(self, metrics: dict[str, float]) -> None:
        mlflow.log_metrics(metrics, run_id=self.run_id)

    @uninterrupted()
    def log_missing_epochs(self, epochs: list[dict[str, float]]) -> None:
        """Log the epochs of a checkpoint that an interruption kept from reaching MLflow."""
        logged = MlflowClient().get_metric_history(self.run_id, "loss")
        done = max((m.step for m in logged), default=0)
        for step, logs in enumerate(epochs, start=1):
            if step > done:
                mlflow.log_metrics(logs, step=step, run_id=self.run_id)

    @uninterrupted()
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
def start_run(cfg: DictConfig, overrides: Sequence[str], split: DataSplit | None,
              parent_run_id: str | None = None, experiment: str | None = None,
              resume_run_id: str | None = None) -> Iterator[TrackedRun]:
    """Open a run in ``cfg.tracking``'s store and log the config, data and code version.

    ``parent_run_id`` makes it a child of a sweep's parent run; ``split`` is None only
    for a run recorded as failed before its data was loaded; ``experiment`` replaces
    ``cfg.tracking.experiment``; ``resume_run_id`` reopens an interrupted run, whose
    config and data are logged already.
    """
    mlflow.set_tracking_uri(cfg.tracking.uri)
    mlflow.set_experiment(experiment or cfg.tracking.experiment)
    tags = {"overrides": " ".join(overrides) or "(defaults)", **_git_tags(),
            "host": socket.gethostname(), "pid": str(os.getpid()),
            **{f"version.{pkg}": version(pkg) for pkg in TRACED_PACKAGES}}
    with mlflow.start_run(run_id=resume_run_id, run_name=cfg.tracking.run_name, tags=tags,
                          parent_run_id=parent_run_id) as active:
        if resume_run_id is None:
            with uninterrupted():
                mlflow.log_params(flatten(OmegaConf.to_container(cfg, resolve=True)))
                mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
                if split is not None:
                    _log_split(split)
        try:
            yield TrackedRun(active.info.run_id, absolute_uri(cfg.tracking.uri))
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM as the CLI maps it
            mlflow.set_tag("error", "interrupted")
            mlflow.end_run(status="KILLED")
            raise
        except BaseException as err:
            mlflow.set_tag("error", f"{type(err).__name__}: {err}"[:MAX_TAG_LENGTH])
            mlflow.log_text(traceback.format_exc(), "error.txt")
            raise


def find_interrupted(cfg: DictConfig) -> str:
    """The latest KILLED run of ``cfg.tracking.experiment``, which ``trainer.resume`` continues."""
    client = MlflowClient(cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'KILLED'",
                              order_by=["attributes.start_time DESC"], max_results=1
                              ) if experiment else []
    if not runs:
        raise TrackingStoreError(f"trainer.resume=true: no interrupted (KILLED) run in "
                                 f"experiment {cfg.tracking.experiment!r} of {cfg.tracking.uri}")
    return runs[0].info.run_id


def record_failed_run(cfg: DictConfig, overrides: Sequence[str], parent_run_id: str | None,
                      error: Exception) -> None:
    """Record a run that failed before it could start (bad config or data) as FAILED."""
    with contextlib.suppress(type(error)), start_run(cfg, overrides, None, parent_run_id):
        raise error


class JobLost(RuntimeError):
    """A sweep job's worker died (killed, out of memory, node lost) before it returned."""


def record_lost_job(cfg: DictConfig, overrides: Sequence[str], parent_run_id: str,
                    error: BaseException) -> None:
    """Record a sweep job whose worker died as FAILED: the run it had opened, or a new
    child run holding its config when it died before opening one."""
    lost = JobLost(f"the job's worker died ({type(error).__name__}: "
                   f"{str(error).splitlines()[0] if str(error) else ''})")
    client = MlflowClient(cfg.tracking.uri)
    parent = client.get_run(parent_run_id)
    joined = " ".join(overrides) or "(defaults)"
    opened = [run for run in client.search_runs(
                  [parent.info.experiment_id],
                  filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' "
                                "and attributes.status = 'RUNNING'")
              if run.data.tags.get("overrides") == joined]
    if not opened:
        record_failed_run(cfg, overrides, parent_run_id, lost)
        return
    client.set_tag(opened[0].info.run_id, "error", f"JobLost: {lost}"[:MAX_TAG_LENGTH])
    client.set_terminated(opened[0].info.run_id, status="FAILED")


def _log_split(split: DataSplit) -> None:
    mlflow.log_params({"split.n_train": len(split.y_train), "split.n_val": len(split.y_val),
                       "split.n_test": len(split.y_test)})
    with warnings.catch_warnings():  # a local path matches two equivalent source types
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_numpy(split.x_train, targets=split.y_train,
                                         source=split.source, name="cifar10",
                                         digest=split.digest[:16])
    try:
        mlflow.log_input(dataset, context="training")
    except MlflowException:
        # parallel jobs of a sweep race in MLflow's check-then-insert of the same dataset
        # (UNIQUE constraint failed: datasets...); the loser finds it registered now
        mlflow.log_input(dataset, context="training")


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """Nested config to dotted keys, e.g. {"model.hidden": "[1024, 512]"}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


class TrackingStoreError(UserError, RuntimeError):
    """The tracking store cannot be reached or written; the message names it."""


def check_store(uri: str, timeout: float = 5.0) -> None:
    """Fail within seconds if ``uri`` cannot take a run, rather than after training.

    An HTTP server must answer its health check; a SQLite file (or its folder, for a
    new store) must be writable and not locked by another writer.
    """
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
                return
        except (OSError, ValueError) as err:
            raise TrackingStoreError(f"tracking.uri={uri}: no MLflow server answers there "
                                     f"({err}); start one or choose another store") from err
    if uri.startswith("sqlite:///"):
        path = Path(absolute_uri(uri)[len("sqlite:///"):])
        if not path.exists():
            if not os.access(path.parent, os.W_OK):
                raise TrackingStoreError(f"tracking.uri={uri}: cannot create {path}: its folder "
                                         "is not writable")
            return
        if not os.access(path, os.W_OK):
            raise TrackingStoreError(f"tracking.uri={uri}: {path} is read-only")
        try:
            with sqlite3.connect(path, timeout=timeout) as db:
                db.execute("BEGIN IMMEDIATE")  # takes the write lock, or waits `timeout`
                db.rollback()
        except sqlite3.Error as err:
            raise TrackingStoreError(f"tracking.uri={uri}: {path} cannot be written ({err})"
                                     ) from err


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


# --- sweeps: a parent run per multirun, its jobs as children -------------------------------


@dataclass(frozen=True)
class ChildRun:
    """One job of a sweep as the store holds it."""

    run_id: str
    name: str
    status: str  # FINISHED, FAILED, KILLED or RUNNING
    params: dict[str, str]
    metrics: dict[str, float]
    seconds: float | None
    error: str | None


def open_sweep(uri: str, experiment: str, run_name: str, tags: dict[str, str],
               params: dict[str, str], resume_key: str | None = None) -> str:
    """Create the sweep's parent run, and the store and experiment with it; return its id.

    Called once, before any job starts, so parallel jobs never race to create the
    SQLite schema or the experiment. With ``resume_key``, a parent already tagged with
    it is reopened instead, so a resumed search keeps one parent.
    """
    client = MlflowClient(uri)
    experiment_id = _experiment_id(client, experiment)
    if resume_key is not None:
        earlier = client.search_runs([experiment_id],
                                     filter_string=f"tags.sweep_resume_key = '{resume_key}'",
                                     max_results=1)
        if earlier:
            parent_id = earlier[0].info.run_id
            client.update_run(parent_id, status="RUNNING")
            for child in sweep_children(uri, parent_id):  # jobs of the interrupted search
                if child.status == "RUNNING":
                    client.set_terminated(child.run_id, status="KILLED")
            return parent_id
        tags = {**tags, "sweep_resume_key": resume_key}
    run = client.create_run(experiment_id, run_name=run_name,
                            tags={**tags, **_git_tags(), "sweep": "parent"})
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
    return run.info.run_id


def find_sweep(uri: str, run_id_or_experiment: str) -> str | None:
    """The parent run with this id, or the latest sweep parent of the experiment so named."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(run_id_or_experiment)
    if experiment is None:
        try:
            return client.get_run(run_id_or_experiment).info.run_id
        except MlflowException:
            return None
    latest = client.search_runs([experiment.experiment_id], filter_string="tags.sweep = 'parent'",
                                order_by=["attributes.start_time DESC"], max_results=1)
    return latest[0].info.run_id if latest else None


def sweep_children(uri: str, parent_run_id: str) -> list[ChildRun]:
    """The sweep's child runs, oldest first."""
    client = MlflowClient(uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                              order_by=["attributes.start_time ASC"], max_results=10_000)
    return [ChildRun(run.info.run_id, run.info.run_name, run.info.status, dict(run.data.params),
                     dict(run.data.metrics),
                     (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time
                     else None, run.data.tags.get("error"))
            for run in runs]


def close_sweep(uri: str, parent_run_id: str, tags: dict[str, str],
                metrics: dict[str, float], files: Sequence[Path], figures: dict[str, Figure]
                ) -> None:
    """Record the sweep's outcome and report under ``report/`` of its parent, end it FINISHED."""
    client = MlflowClient(uri)
    now = int(time.time() * 1000)
    client.log_batch(parent_run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    for path in files:
        client.log_artifact(parent_run_id, str(path), artifact_path="report")
    for name, figure in figures.items():
        client.log_figure(parent_run_id, figure, f"report/{name}")
    client.set_terminated(parent_run_id, status="FINISHED")


def download_artifact(uri: str, run_id: str, path: str, destination: Path) -> Path | None:
    """A run's artifact copied to ``destination``, or None when the run has none there."""
    try:
        return Path(MlflowClient(uri).download_artifacts(run_id, path, str(destination)))
    except (MlflowException, OSError):
        return None


def _experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else client.create_experiment(name)



def log_eda(cfg: DictConfig, overrides: Sequence[str], split: DataSplit, statistics: dict,
            figures: dict[str, Figure], html: Path) -> str:
    """One run in the ``eda.experiment`` experiment: config, data, statistics, figures, page."""
    with start_run(cfg, overrides, split, experiment=cfg.eda.experiment) as run:
        mlflow.log_dict(statistics, "statistics.json")
        for file_name, figure in figures.items():
            mlflow.log_figure(figure, f"plots/{file_name}")
        mlflow.log_artifact(str(html))
    return run.run_id
