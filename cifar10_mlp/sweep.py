"""Multirun bookkeeping as a Hydra callback: one MLflow parent run per sweep, a report at the end.

The parent (with the SQLite store and experiment) is created in the launching process
before any job starts; jobs find its id in ``launch.PARENT_RUN_ENV``, which every
launcher's workers inherit, and open their runs as its children.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cifar10_mlp.launch import PARENT_RUN_ENV, fill_launch_settings

log = logging.getLogger(__name__)


class SweepTracker(Callback):
    """Opens the sweep's parent run before the jobs, and closes it with a report after them."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        # imported here, not at the top: Hydra builds callbacks for every run, and a
        # single run must not import MLflow and TensorFlow before its config is checked
        from cifar10_mlp import sweep_store

        sweeper = config.hydra.sweeper
        swept = {f"sweep.{key}": value for key, value in
                 (o.split("=", 1) for o in config.hydra.overrides.task if "=" in o)}
        swept |= {f"sweep.{key}": str(value)
                  for key, value in (sweeper.get("params") or {}).items()}
        study = sweeper.get("study_name")
        tags = {"sweep_command": " ".join(["cifar10-mlp", *sys.argv[1:]])}
        if study:  # an Optuna search: what the report needs to rank it and mark its front
            from cifar10_mlp.study import check_search

            # before the parent opens: a setting that cannot work leaves no run behind
            check_search(sweeper.objectives, sweeper.sampler, sweeper.pruner, sweeper.storage,
                         sweeper.n_jobs, config.hydra.launcher._target_)
            tags |= {"sweep_objectives": json.dumps(dict(sweeper.objectives)),
                     "sweep_sampler": sweeper.sampler, "sweep_pruner": sweeper.pruner}
        self.parent_run_id = sweep_store.open_sweep(
            config.tracking.uri,
            config.tracking.experiment,
            run_name=f"sweep {study}" if study else "sweep",
            tags=tags,
            params=swept,
            # the study's own identity: its journal file and name
            resume_key=f"{Path(sweeper.storage).resolve()}#{study}" if study else None,
        )
        os.environ[PARENT_RUN_ENV] = self.parent_run_id
        log.info("sweep parent MLflow run %s", self.parent_run_id)
        # Hydra calls on_multirun_end only when the sweep returns: a sweeper or launcher
        # that raises would leave the parent RUNNING for ever
        atexit.register(self._end_unfinished, config.tracking.uri, self.parent_run_id)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs) -> None:
        """A job that ended FAILED here was lost by its launcher (``cifar10-mlp`` itself turns
        errors into FAILED runs and a NaN): record it, so no job of the sweep goes missing."""
        if self.parent_run_id is None or job_return.status != JobStatus.FAILED:
            return
        from cifar10_mlp import sweep_store

        job_cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        fill_launch_settings(job_cfg, config.hydra, sweeping=True)
        # the job's own overrides, as its run records them (not the sweeper's hydra.* ones)
        overrides = [o for o in job_return.overrides if not o.startswith(("hydra.", "hydra/"))]
        sweep_store.record_lost_job(job_cfg, overrides, self.parent_run_id,
                                    job_return._return_value)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.parent_run_id is None:
            return
        outcome = report_sweep(config.tracking.uri, self.parent_run_id,
                               Path(config.hydra.sweep.dir))
        atexit.unregister(self._end_unfinished)
        os.environ.pop(PARENT_RUN_ENV, None)
        if outcome.n_failed:
            total = outcome.n_finished + outcome.n_pruned + outcome.n_failed
            sys.exit(f"cifar10-mlp: {outcome.n_failed} of {total} sweep jobs failed; see the "
                     "report above and their runs' `error` tags")


    @staticmethod
    def _end_unfinished(uri: str, parent_run_id: str) -> None:
        from cifar10_mlp import sweep_store

        try:
            sweep_store.end_unfinished(uri, parent_run_id)
        except Exception as err:  # at exit: say so, never mask how the sweep ended
            log.warning("could not close the sweep's parent run %s: %s", parent_run_id, err)


def report_sweep(uri: str, parent_run_id: str, out_dir: Path):
    """Build the comparison report of a sweep, write it to ``out_dir``, log it to the parent;
    return the :class:`report.SweepReport`."""
    from cifar10_mlp import plots, report, sweep_store

    objectives = sweep_store.parent_tags(uri, parent_run_id).get("sweep_objectives")
    outcome = report.build(sweep_store.sweep_children(uri, parent_run_id),
                           json.loads(objectives) if objectives else None)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [report.write_csv(outcome, out_dir / "runs.csv")]
    (out_dir / "runs.md").write_text(report.to_markdown(outcome) + "\n")
    files.append(out_dir / "runs.md")
    tags = {"sweep_summary": report.summary_line(outcome)}
    metrics = {"n_finished": outcome.n_finished, "n_pruned": outcome.n_pruned,
               "n_failed": outcome.n_failed}
    if outcome.best is not None:
        tags["best_run_id"] = outcome.best.run_id
        metrics |= {f"best_{k}": v for k, v in outcome.best.metrics.items()
                    if k in report.METRIC_COLUMNS}
        matrix = sweep_store.download_artifact(uri, outcome.best.run_id,
                                               "plots/confusion_matrix.png", out_dir)
        if matrix is not None:
            files.append(matrix.replace(out_dir / "best_confusion_matrix.png"))
    figures = {"val_accuracy_by_hyperparameter.png": plots.hyperparameter_scatter(
        outcome.rows, outcome.swept, report.SELECTION_METRIC)}
    if len(outcome.objectives) > 1:
        figures["pareto_front.png"] = plots.pareto_front(outcome.rows, outcome.objectives)
    sweep_store.close_sweep(uri, parent_run_id, tags, metrics, files, figures)
    print(f"\nSweep {parent_run_id}: {report.summary_line(outcome)}\n"
          f"{report.to_markdown(outcome)}\nreport: {out_dir}\n")
    return outcome
