"""MLflow tracking of one run.

``start_run`` opens a run and records what the run depends on (config, data,
code version); the returned :class:`TrackedRun` records what it produced, through one
client of the run's store, by run id (no process-wide tracking URI, no active run).
A run whose body raises ends FAILED with the error as a tag and a traceback file.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow.data
import numpy as np
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import (
    Dataset,
    DatasetInput,
    InputTag,
    LoggedModelOutput,
    LoggedModelStatus,
    Metric,
    Param,
    RunTag,
)
from mlflow.exceptions import MlflowException
from mlflow.models import Model, infer_signature
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID
from omegaconf import DictConfig, OmegaConf

from cifar10_mlp.data.archive import DataSplit
from cifar10_mlp.errors import UserError
from cifar10_mlp.stopping import uninterrupted
from cifar10_mlp.tracking.provenance import (
    FROM_RUN_TAG,
    TRACED_PACKAGES,
    flatten,
    git_tags,
    overrides_tags,
)
from cifar10_mlp.tracking.store import (
    HEARTBEAT_TAG,
    absolute_uri,
    open_client,
    open_experiment,
    write_permitted,
)
from cifar10_mlp.training.evaluate import Evaluation

if TYPE_CHECKING:  # importing Keras (TensorFlow) takes seconds; store checks run before it
    import keras

MAX_TAG_LENGTH = 5000
# tag of a run that an Optuna pruner stopped: the epoch it stopped after
PRUNED_TAG = "pruned"
# tag of a run that logged a model: its ``models:/<id>`` URI
MODEL_URI_TAG = "model_uri"
# tag of a sweep job's run: the log file holding the job's whole output (kept as an artifact)
JOB_LOG_TAG = "job_log"
# key of a logged model's metadata (MLmodel) that lists its classes in output order
CLASS_NAMES_KEY = "class_names"


class TrackedRun:
    """An open MLflow run, with loggers for what training and evaluation produce."""

    def __init__(self, client: MlflowClient, run_id: str, tracking_uri: str,
                 experiment_id: str):
        self.client = client
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.model_id: str | None = None  # its LoggedModel, once logged

    @uninterrupted()
    def log_epoch(self, step: int, metrics: dict[str, float]) -> None:
        """One epoch's metrics (loss, accuracy, val_*, lr) at step = epoch number, and the
        run's heartbeat, in one write (from any thread)."""
        now = time.time()
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, v, int(now * 1000), step) for k, v in metrics.items()],
            tags=[RunTag(HEARTBEAT_TAG, str(round(now)))])

    @uninterrupted()
    def log_test(self, evaluation: Evaluation) -> None:
        """Test metrics, the classification report and the confusion matrix."""
        self.log_metrics(evaluation.metrics())
        self.client.log_dict(self.run_id, evaluation.report, "classification_report.json")
        self.client.log_dict(self.run_id, {
            "class_names": list(evaluation.class_names),
            "counts": evaluation.confusion.tolist(),
            "row_normalized": evaluation.confusion_normalized.tolist()},
            "confusion_matrix.json")

    @uninterrupted()
    def log_figures(self, figures: dict[str, Figure]) -> None:
        """Figures under ``plots/``, by file name."""
        for file_name, figure in figures.items():
            self.client.log_figure(self.run_id, figure, f"plots/{file_name}")

    @uninterrupted()
    def mark_pruned(self, epoch: int) -> None:
        """Tag a run that a search's pruner stopped after ``epoch``."""
        self.client.set_tag(self.run_id, PRUNED_TAG, str(epoch))

    @uninterrupted()
    def log_metrics(self, metrics: dict[str, float]) -> None:
        """Metrics of the run, and of its model when it has logged one."""
        self._log(metrics, step=0)

    def _log(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[
            Metric(k, float(v), now, step, model_id=self.model_id) for k, v in metrics.items()])

    @uninterrupted()
    def log_missing_epochs(self, epochs: list[dict[str, float]], checkpoint: Path) -> None:
        """Log the epochs of a checkpoint that an interruption kept from reaching MLflow
        (``epochs``: the checkpoint's, none when the run stopped before its first one)."""
        logged = self.client.get_metric_history(self.run_id, "loss")
        done = max((m.step for m in logged), default=0)
        if done > len(epochs):  # training would start before epochs it has logged
            raise UserError(f"run {self.run_id} logged {done} epochs, but its checkpoint in "
                            f"{checkpoint} holds {len(epochs)}; start a new run instead")
        for step, logs in enumerate(epochs, start=1):
            if step > done:
                self._log(logs, step=step)

    def log_split(self, split: DataSplit) -> None:
        """The split's sizes as params, and the training images as the run's input dataset."""
        self.client.log_batch(self.run_id, params=[
            Param("split.n_train", str(len(split.y_train))),
            Param("split.n_val", str(len(split.y_val))),
            Param("split.n_test", str(len(split.y_test)))])
        with warnings.catch_warnings():  # a local path matches two equivalent source types
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_numpy(split.x_train, targets=split.y_train,
                                             source=split.source, name="cifar10",
                                             digest=split.digest[:16])
        inputs = [DatasetInput(Dataset(**dataset.to_dict()),
                               [InputTag(MLFLOW_DATASET_CONTEXT, "training")])]
        try:
            self.client.log_inputs(self.run_id, inputs)
        except MlflowException:
            # parallel jobs of a sweep race in MLflow's check-then-insert of the same dataset
            # (UNIQUE constraint failed: datasets...); the loser finds it registered now
            self.client.log_inputs(self.run_id, inputs)

    @uninterrupted()
    def log_model(self, model: keras.Model, example: np.ndarray,
                  class_names: Sequence[str]) -> str:
        """The Keras model as the run's MLflow 3 LoggedModel (``models:/<id>``, on the
        experiment's Models tab), with a signature of raw uint8 images and the class names
        in its metadata; the test metrics logged before it are linked to it. Returns its URI.
        Layers that only train faster (``fused_layers``) are logged as Keras' own, so the
        model loads wherever Keras does, without this package.

        No input example: ``log_model(input_example=...)`` writes the example before it
        creates the model folder and fails (mlflow/mlflow#16183), leaving a second, empty
        LoggedModel behind.
        """
        from cifar10_mlp.training.fused_layers import with_keras_layers

        model = with_keras_layers(model)
        run = self.client.get_run(self.run_id)
        logged = self.client.create_logged_model(self.experiment_id, name="model",
                                                 source_run_id=self.run_id,
                                                 params=run.data.params)
        self.client.log_outputs(self.run_id, [LoggedModelOutput(logged.model_id, step=0)])
        self.model_id = logged.model_id
        # the metrics logged so far at step 0 (test and selection metrics, not the epochs')
        # are the model's too, shown on the experiment's Models tab: as Model.log links them
        self.client.log_batch(self.run_id, metrics=[
            Metric(m.key, m.value, m.timestamp, m.step, model_id=logged.model_id)
            for key in run.data.metrics
            for m in self.client.get_metric_history(self.run_id, key)
            if m.step == 0 and m.model_id is None])
        import mlflow.keras  # imports Keras: only once a run has trained a model

        with tempfile.TemporaryDirectory() as folder:
            mlflow.keras.save_model(
                model, str(Path(folder, "model")),
                mlflow_model=Model(artifact_path=logged.artifact_location, run_id=self.run_id,
                                   model_id=logged.model_id),
                signature=infer_signature(example, model.predict(example, verbose=0)),
                metadata={CLASS_NAMES_KEY: list(class_names)},
                # explicit requirements: inferring them would inspect the environment every run
                pip_requirements=[f"{pkg}=={version(pkg)}" for pkg in ("tensorflow", "keras")])
            self.client.log_model_artifacts(logged.model_id, str(Path(folder, "model")))
        self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        model_uri = f"models:/{logged.model_id}"
        self.client.set_tag(self.run_id, MODEL_URI_TAG, model_uri)
        return model_uri


@contextmanager
def start_run(cfg: DictConfig, overrides: Sequence[str], split: DataSplit | None,
              parent_run_id: str | None = None, experiment: str | None = None,
              resume_run_id: str | None = None, job_log: Path | None = None
              ) -> Iterator[TrackedRun]:
    """Open a run in ``cfg.tracking``'s store and log the config, data and code version.

    ``parent_run_id`` makes it a child of a sweep's parent run; ``split`` is None only
    for a run recorded before its data was loaded (failed, or lost); ``experiment`` replaces
    ``cfg.tracking.experiment``; ``resume_run_id`` reopens an interrupted run, whose
    config is logged already. ``job_log``: a sweep job's output file, named in a tag and
    kept as an artifact as the run ends, however it ends.
    """
    client = open_client(cfg.tracking.uri)
    experiment_id = open_experiment(cfg.tracking.uri, experiment or cfg.tracking.experiment)
    tags = {**overrides_tags(overrides), **git_tags(),
            "host": socket.gethostname(), "pid": str(os.getpid()),
            HEARTBEAT_TAG: str(round(time.time())),
            **{f"version.{pkg}": version(pkg) for pkg in TRACED_PACKAGES}}
    if cfg.get("from_run"):
        tags[FROM_RUN_TAG] = cfg.from_run
    if job_log is not None:
        tags[JOB_LOG_TAG] = str(job_log)
    if resume_run_id is None:
        if parent_run_id is not None:
            tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        with write_permitted(cfg.tracking.uri, experiment or cfg.tracking.experiment):
            run_id = client.create_run(experiment_id, run_name=cfg.tracking.run_name,
                                       tags=resolve_tags(tags)).info.run_id
    else:
        run_id = resume_run_id
        client.update_run(run_id, status="RUNNING")
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    tracked = TrackedRun(client, run_id, absolute_uri(cfg.tracking.uri), experiment_id)
    with uninterrupted():
        logged = client.get_run(run_id).data
        if resume_run_id is None:
            client.log_batch(run_id, params=[
                Param(k, v) for k, v in flatten(OmegaConf.to_container(cfg, resolve=True)).items()])
            client.log_text(run_id, OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        elif "error" in logged.tags:  # it goes on: no longer interrupted
            client.delete_tag(run_id, "error")
        # a resumed run whose process died before it loaded the data has none logged
        if split is not None and "split.n_train" not in logged.params:
            tracked.log_split(split)
    try:
        yield tracked
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM as the CLI maps it
        with uninterrupted():  # a second signal waits until the run is marked
            client.set_tag(run_id, "error", "interrupted")
            keep_job_log(client, run_id, job_log)
            client.set_terminated(run_id, "KILLED")
        raise
    except BaseException as err:
        with uninterrupted():
            client.set_tag(run_id, "error", f"{type(err).__name__}: {err}"[:MAX_TAG_LENGTH])
            client.log_text(run_id, traceback.format_exc(), "error.txt")
            keep_job_log(client, run_id, job_log)
            client.set_terminated(run_id, "FAILED")
        raise
    keep_job_log(client, run_id, job_log)
    client.set_terminated(run_id, "FINISHED")


def keep_job_log(client: MlflowClient, run_id: str, job_log: Path | None) -> None:
    """The job's output so far as the run's artifact (what it printed after this stays in
    the file); a log that cannot be kept does not change how the run ends."""
    if job_log is None or not job_log.exists():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        client.log_artifact(run_id, str(job_log))
    except Exception as err:
        warnings.warn(f"could not keep {job_log} as run {run_id}'s artifact: {err}",
                      stacklevel=2)


def log_eda(cfg: DictConfig, overrides: Sequence[str], split: DataSplit, statistics: dict,
            figures: dict[str, Figure], html: Path) -> str:
    """One run in the ``eda.experiment`` experiment: config, data, statistics, figures, page."""
    with start_run(cfg, overrides, split, experiment=cfg.eda.experiment) as run:
        run.client.log_dict(run.run_id, statistics, "statistics.json")
        run.log_figures(figures)
        run.client.log_artifact(run.run_id, str(html))
    return run.run_id
