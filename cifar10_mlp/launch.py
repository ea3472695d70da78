"""What a job takes from how it was launched: its sweep's parent run, run name, threads,
and the Optuna trial it reports to.

Shared by the entry point (``cli.py``) and the sweep callback (``sweep.py``), which
records jobs their launcher lost with the settings those jobs would have had.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:  # Optuna and MLflow are imported only by the jobs that need them
    from cifar10_mlp.study import JobTrial
    from cifar10_mlp.sweep_store import ChildRun

# how sweep jobs learn their parent run (set by sweep.SweepTracker before jobs start);
# not MLFLOW_RUN_ID, which MLflow would take as a run to resume
PARENT_RUN_ENV = "CIFAR10_MLP_SWEEP_PARENT_RUN_ID"
# and the keys the sweep varies (comma-separated), which name each job's run
SWEPT_KEYS_ENV = "CIFAR10_MLP_SWEPT_KEYS"


def job_overrides(overrides) -> list[str]:
    """A job's own overrides, which identify it within its sweep: instructions about how to
    launch it (``sweep.resume=...``) left out."""
    return [o for o in overrides if not o.startswith("sweep.resume=")]


def fill_launch_settings(cfg: DictConfig, hydra_cfg: DictConfig, sweeping: bool) -> None:
    """Fill in what the config leaves to the launch: a sweep job's run name (``job 3:
    model.hidden=[128] optimizer.lr=0.001``, its number and swept values) and TensorFlow's
    threads (all cores, or the launcher's cores per job)."""
    if sweeping and cfg.tracking.run_name is None:
        cfg.tracking.run_name = job_name(hydra_cfg.job.num, job_overrides(
            hydra_cfg.overrides.task), os.environ.get(SWEPT_KEYS_ENV, "").split(","))
    if cfg.trainer.threads is None:
        cfg.trainer.threads = cpus_per_job(hydra_cfg.launcher) if sweeping else os.cpu_count() or 1


def job_name(number: int, overrides: list[str], swept: list[str]) -> str:
    """``job N``, followed by the job's values of the swept keys (numbers to 4 digits)."""
    values = [(key, value) for key, _, value in (o.partition("=") for o in overrides)
              if key in swept]
    shown = " ".join(f"{key}={_short(value)}" for key, value in values)
    return f"job {number}: {shown}"[:240] if shown else f"job {number}"


def _short(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() else f"{number:.4g}"


def cpus_per_job(launcher: DictConfig) -> int:
    """The cores one sweep job may use, read from the launcher's settings.

    Ray's ``remote.num_cpus`` and submitit's ``cpus_per_task`` give them per job;
    joblib's ``n_jobs`` parallel jobs share this machine's cores (-1: one job per core).
    """
    per_job = OmegaConf.select(launcher, "remote.num_cpus") or launcher.get("cpus_per_task")
    if per_job:
        return int(per_job)
    cores = os.cpu_count() or 1
    n_jobs = launcher.get("n_jobs") or 1
    if n_jobs < 0:  # joblib's convention: -1 all cores, -2 all but one, ...
        n_jobs = cores + 1 + n_jobs
    return max(1, cores // max(1, n_jobs))


def search_trial(hydra_cfg: DictConfig) -> JobTrial | None:
    """The Optuna trial this job reports to, when our Optuna sweeper launched it (it sets
    ``hydra.sweeper.trial``); the study's storage path is relative to the launch folder."""
    if OmegaConf.select(hydra_cfg, "sweeper.trial") is None:
        return None
    from cifar10_mlp.study import join_trial

    return join_trial(hydra_cfg.sweeper, hydra_cfg.runtime.cwd)


def earlier_run(cfg: DictConfig, parent_run_id: str, overrides: list[str]) -> ChildRun | None:
    """In a sweep continued with ``sweep.resume=true``: this job's run from before, if any
    (a run left RUNNING by a lost process is ended KILLED first, to be continued)."""
    from cifar10_mlp.sweep_store import earlier_job

    return earlier_job(cfg.tracking.uri, parent_run_id, overrides,
                       cfg.tracking.lost_after_minutes * 60)


def sweep_stopping(cfg: DictConfig, parent_run_id: str | None) -> bool:
    """Whether this job's sweep is being stopped (Ctrl-C, SIGTERM): then it does not start,
    though its launcher still hands it out (Ray runs queued tasks as workers free up)."""
    if parent_run_id is None:
        return False
    from cifar10_mlp.sweep_store import stopping

    return stopping(cfg.tracking.uri, parent_run_id)
