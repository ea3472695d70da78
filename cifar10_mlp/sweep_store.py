"""A sweep as the MLflow store holds it: one parent run, its jobs as child runs.

Opening and closing the parent, finding a sweep to report on or to resume, reading its
children, and recording jobs that their launcher lost. One run's own logging is
``tracking.py``'s.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig

from cifar10_mlp.tracking import (
    MAX_TAG_LENGTH,
    PRUNED_TAG,
    git_tags,
    open_experiment,
    record_failed_run,
)


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
    pruned_epoch: int | None = None  # FINISHED early: a pruner stopped it after this epoch


def open_sweep(uri: str, experiment: str, run_name: str, tags: dict[str, str],
               params: dict[str, str], resume_key: str | None = None) -> str:
    """Create the sweep's parent run, and the store and experiment with it; return its id.

    Called once, before any job starts, so parallel jobs never race to create the
    SQLite schema or the experiment. With ``resume_key``, a parent already tagged with
    it is reopened instead, so a resumed search keeps one parent.
    """
    client = MlflowClient(uri)
    experiment_id = open_experiment(uri, experiment)
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
                            tags={**tags, **git_tags(), "sweep": "parent"})
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


def parent_tags(uri: str, parent_run_id: str) -> dict[str, str]:
    """The tags of a sweep's parent run (its command, objectives, summary)."""
    return dict(MlflowClient(uri).get_run(parent_run_id).data.tags)


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
                     else None, run.data.tags.get("error"),
                     int(run.data.tags[PRUNED_TAG]) if PRUNED_TAG in run.data.tags else None)
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


def end_unfinished(uri: str, parent_run_id: str) -> None:
    """End a parent that is still RUNNING as FAILED: its sweep stopped before its end."""
    client = MlflowClient(uri)
    if client.get_run(parent_run_id).info.status == "RUNNING":
        client.set_tag(parent_run_id, "error", "the sweep stopped before it ended; see the "
                       "command's output")
        client.set_terminated(parent_run_id, status="FAILED")


def download_artifact(uri: str, run_id: str, path: str, destination: Path) -> Path | None:
    """A run's artifact copied to ``destination``, or None when the run has none there."""
    try:
        return Path(MlflowClient(uri).download_artifacts(run_id, path, str(destination)))
    except (MlflowException, OSError):
        return None


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
