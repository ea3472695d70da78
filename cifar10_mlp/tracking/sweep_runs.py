"""A sweep as the MLflow store holds it: one parent run, its jobs as child runs.

Opening and closing the parent, finding a sweep to report on or to resume, reading its
children, and recording jobs that their launcher lost. One run's own logging is
``tracking.py``'s.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig

from cifar10_mlp.errors import JobLost
from cifar10_mlp.tracking.provenance import git_tags, overrides_tag
from cifar10_mlp.tracking.runs import JOB_LOG_TAG, MAX_TAG_LENGTH, PRUNED_TAG, start_run
from cifar10_mlp.tracking.store import (
    alive,
    end_lost,
    open_client,
    open_experiment,
    process_lost,
    write_permitted,
)

# tag of a parent run: what its sweep runs (its Optuna study, or its grid of jobs)
RESUME_KEY_TAG = "sweep_resume_key"
# tag of a parent run while a signal stops its sweep: jobs do not start then
STOPPING_TAG = "sweep_stopping"


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
    overrides: str = ""  # the job's own overrides, which identify it within its sweep
    experiment_id: str = ""
    job_log: str | None = None  # the file holding the job's output, where it ran


def open_sweep(uri: str, experiment: str, run_name: str, tags: dict[str, str],
               params: dict[str, str], resume_key: str) -> str:
    """Create the sweep's parent run, and the store and experiment with it; return its id.

    Called once, before any job starts, so parallel jobs never race to create the
    SQLite schema or the experiment. ``resume_key`` (what the sweep runs: its study, or
    its grid) lets a later command find it again to continue it.
    """
    client = open_client(uri)
    with write_permitted(uri, experiment):
        run = client.create_run(open_experiment(uri, experiment), run_name=run_name,
                                tags={**tags, **git_tags(), "sweep": "parent",
                                      RESUME_KEY_TAG: resume_key})
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
    return run.info.run_id


def latest_sweep(uri: str, experiment: str, resume_key: str) -> tuple[str, str] | None:
    """The id and status of the latest parent run with this resume key, if any."""
    client = open_client(uri)
    experiment_id = open_experiment(uri, experiment)
    found = client.search_runs([experiment_id], f"tags.{RESUME_KEY_TAG} = '{resume_key}'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    return (found[0].info.run_id, found[0].info.status) if found else None


def reopen_sweep(uri: str, parent_run_id: str, lost_after_s: float) -> None:
    """Set an earlier sweep's parent RUNNING again; its jobs whose process is gone end
    KILLED (``error: process lost``), so the resumed jobs can continue them."""
    client = open_client(uri)
    client.update_run(parent_run_id, status="RUNNING")
    for stale in ("error", STOPPING_TAG):
        if stale in client.get_run(parent_run_id).data.tags:
            client.delete_tag(parent_run_id, stale)
    end_lost_children(uri, parent_run_id, lost_after_s)


def end_lost_children(uri: str, parent_run_id: str, lost_after_s: float) -> None:
    """End the sweep's RUNNING children whose process is gone as KILLED."""
    client = open_client(uri)
    for run in _running_children(client, parent_run_id):
        if process_lost(run, lost_after_s):
            end_lost(client, run.info.run_id)


def earlier_job(uri: str, parent_run_id: str, overrides: Sequence[str], lost_after_s: float
                ) -> ChildRun | None:
    """The latest run of the job with these overrides in this sweep (a resumed sweep's job
    continues it); one left RUNNING by a lost process is ended KILLED first."""
    end_lost_children(uri, parent_run_id, lost_after_s)
    same = [run for run in sweep_children(uri, parent_run_id)
            if run.overrides == overrides_tag(overrides)]
    return same[-1] if same else None


def stop_children(uri: str, parent_run_id: str, reason: str, settle_s: float = 3.0,
                  grace_s: float = 30.0) -> None:
    """End every RUNNING child of a stopped sweep as KILLED, each with its epochs so far.

    The parent is tagged ``sweep_stopping`` first, so a job that a launcher starts now ends
    at once. Jobs that got the signal themselves end their own runs; one whose process is
    gone (a pool that killed its workers) is ended here at once. A job still running on this
    host ``settle_s`` after it was first seen gets SIGTERM, which ends a job as Ctrl-C does,
    and ``grace_s`` more; a run still RUNNING after that is ended here.
    """
    client = open_client(uri)
    client.set_tag(parent_run_id, STOPPING_TAG, reason)
    first_seen: dict[str, float] = {}
    signalled: set[str] = set()
    while running := _running_children(client, parent_run_id):
        now = time.monotonic()
        for run in running:
            run_id, tags = run.info.run_id, run.data.tags
            waited = now - first_seen.setdefault(run_id, now)
            pid = int(tags["pid"]) if tags.get("host") == socket.gethostname() else None
            if waited > settle_s + grace_s or (pid is not None and (
                    pid == os.getpid() or not alive(pid))):
                client.set_tag(run_id, "error", "interrupted")
                client.set_terminated(run_id, status="KILLED")
            elif pid is not None and waited > settle_s and run_id not in signalled:
                signalled.add(run_id)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGTERM)
        time.sleep(0.3)


def stopping(uri: str, parent_run_id: str) -> bool:
    """Whether the sweep is being stopped (a job about to start should not)."""
    return STOPPING_TAG in open_client(uri).get_run(parent_run_id).data.tags


def _running_children(client: MlflowClient, parent_run_id: str) -> list[Run]:
    parent = client.get_run(parent_run_id)
    return client.search_runs([parent.info.experiment_id],
                              f"tags.mlflow.parentRunId = '{parent_run_id}' "
                              "and attributes.status = 'RUNNING'")


def find_sweep(uri: str, run_id_or_experiment: str) -> str | None:
    """The parent run with this id, or the latest sweep parent of the experiment so named."""
    client = open_client(uri)
    experiment = client.get_experiment_by_name(run_id_or_experiment)
    if experiment is None:
        try:
            return client.get_run(run_id_or_experiment).info.run_id
        except MlflowException:
            return None
    latest = client.search_runs([experiment.experiment_id], filter_string="tags.sweep = 'parent'",
                                order_by=["attributes.start_time DESC"], max_results=1)
    return latest[0].info.run_id if latest else None


def parent_run(uri: str, parent_run_id: str) -> Run:
    """A sweep's parent run: its command, objectives and swept values, start and end."""
    return open_client(uri).get_run(parent_run_id)


def curves(uri: str, runs: list[ChildRun], key: str) -> dict[str, list[float]]:
    """Each run's per-epoch values of metric ``key``, by run name."""
    client = open_client(uri)
    return {run.name: [m.value for m in sorted(client.get_metric_history(run.run_id, key),
                                               key=lambda m: m.step)]
            for run in runs}


def sweep_children(uri: str, parent_run_id: str) -> list[ChildRun]:
    """The sweep's child runs, oldest first."""
    client = open_client(uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                              order_by=["attributes.start_time ASC"], max_results=10_000)
    return [ChildRun(run.info.run_id, run.info.run_name, run.info.status, dict(run.data.params),
                     dict(run.data.metrics),
                     (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time
                     else None, run.data.tags.get("error"),
                     int(run.data.tags[PRUNED_TAG]) if PRUNED_TAG in run.data.tags else None,
                     run.data.tags.get("overrides", ""), run.info.experiment_id,
                     run.data.tags.get(JOB_LOG_TAG))
            for run in runs]


def close_sweep(uri: str, parent_run_id: str, tags: dict[str, str],
                metrics: dict[str, float], files: Sequence[Path], status: str | None) -> None:
    """Record the sweep's outcome and report under ``report/`` of its parent and end it
    with ``status`` (FINISHED; KILLED for a sweep that was stopped; None: as it is)."""
    client = open_client(uri)
    now = int(time.time() * 1000)
    client.log_batch(parent_run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    for path in files:
        client.log_artifact(parent_run_id, str(path), artifact_path="report")
    if status is not None:
        client.set_terminated(parent_run_id, status=status)


def end_unfinished(uri: str, parent_run_id: str) -> None:
    """End a parent that is still RUNNING as FAILED: its sweep stopped before its end."""
    client = open_client(uri)
    if client.get_run(parent_run_id).info.status == "RUNNING":
        client.set_tag(parent_run_id, "error", "the sweep stopped before it ended; see the "
                       "command's output")
        client.set_terminated(parent_run_id, status="FAILED")


def download_artifact(uri: str, run_id: str, path: str, destination: Path) -> Path | None:
    """A run's artifact copied to ``destination``, or None when the run has none there."""
    try:
        return Path(open_client(uri).download_artifacts(run_id, path, str(destination)))
    except (MlflowException, OSError):
        return None


def record_lost_job(cfg: DictConfig, overrides: Sequence[str], parent_run_id: str,
                    error: BaseException) -> None:
    """Record a sweep job that its launcher reports FAILED, and so no job goes missing.

    One whose worker process died (:class:`~cifar10_mlp.sweeps.launch.JobLost`) ends KILLED with
    ``error: process lost``, its epochs and checkpoint kept for ``sweep.resume=true``; any
    other error ends it FAILED. Its run is the one it had opened, or, when it died before
    opening one, a new child run holding its config.
    """
    lost = isinstance(error, JobLost)
    client = open_client(cfg.tracking.uri)
    parent = client.get_run(parent_run_id)
    own = [run for run in client.search_runs(
               [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")
           if run.data.tags.get("overrides") == overrides_tag(overrides)]
    opened = [run for run in own if run.info.status == "RUNNING"]
    if opened and lost:
        end_lost(client, opened[0].info.run_id)
    elif opened:
        client.set_tag(opened[0].info.run_id, "error",
                       f"{type(error).__name__}: {error}"[:MAX_TAG_LENGTH])
        client.set_terminated(opened[0].info.run_id, status="FAILED")
    elif lost and not own:
        end_lost(client, record_unopened_run(cfg, overrides, parent_run_id))
    elif not lost:
        record_failed_run(cfg, overrides, parent_run_id, error)


def record_failed_run(cfg: DictConfig, overrides: Sequence[str], parent_run_id: str | None,
                      error: Exception, job_log: Path | None = None) -> None:
    """Record a run that failed before it could start (bad config or data) as FAILED."""
    with contextlib.suppress(type(error)), start_run(cfg, overrides, None, parent_run_id,
                                                     job_log=job_log):
        raise error


def record_unopened_run(cfg: DictConfig, overrides: Sequence[str], parent_run_id: str) -> str:
    """Open and close the run of a sweep job that never opened its own (its process died
    first), holding its config; its id, for the caller to mark how it ended."""
    with start_run(cfg, overrides, None, parent_run_id) as run:
        return run.run_id
