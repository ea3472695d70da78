"""What a job takes from how it was launched (its sweep's parent run, run name, threads,
the Optuna trial it reports to), and what our launchers share: running a job in a
worker process, and reporting one whose worker was lost.

Shared by the entry point (``cli.py``), the sweep callback (``sweep.py``), which
records jobs their launcher lost with the settings those jobs would have had, and the
launchers in ``hydra_plugins``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from hydra.core.config_loader import ConfigLoader
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, OmegaConf, open_dict

from cifar10_mlp.errors import JobLost

if TYPE_CHECKING:  # Optuna and MLflow are imported only by the jobs that need them
    from hydra.types import HydraContext, TaskFunction

    from cifar10_mlp.sweeps.study import JobTrial
    from cifar10_mlp.tracking.sweep_runs import ChildRun

log = logging.getLogger(__name__)

# how sweep jobs learn their parent run (set by sweep.SweepTracker before jobs start);
# not MLFLOW_RUN_ID, which MLflow would take as a run to resume
PARENT_RUN_ENV = "CIFAR10_MLP_SWEEP_PARENT_RUN_ID"
# and the keys the sweep varies (comma-separated), which name each job's run
SWEPT_KEYS_ENV = "CIFAR10_MLP_SWEPT_KEYS"
JOB_LOG = "job.log"  # a sweep job's whole output, in its folder


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

    Ray's ``remote.num_cpus`` and submitit's ``cpus_per_task`` give them per job; the
    ``n_jobs`` parallel jobs of joblib and ``processes`` share this machine's cores.
    """
    per_job = OmegaConf.select(launcher, "remote.num_cpus") or launcher.get("cpus_per_task")
    if per_job:
        return int(per_job)
    return max(1, (os.cpu_count() or 1) // jobs_at_once(launcher.get("n_jobs") or 1))


def jobs_at_once(n_jobs: int) -> int:
    """How many jobs a launcher's ``n_jobs`` runs at once, in joblib's convention: a count,
    or -1 for one per core, -2 for all cores but one, ..."""
    return max(1, n_jobs if n_jobs > 0 else (os.cpu_count() or 1) + 1 + n_jobs)


def search_trial(hydra_cfg: DictConfig) -> JobTrial | None:
    """The Optuna trial this job reports to, when our Optuna sweeper launched it (it sets
    ``hydra.sweeper.trial``); the study's storage path is relative to the launch folder."""
    if OmegaConf.select(hydra_cfg, "sweeper.trial") is None:
        return None
    from cifar10_mlp.sweeps.study import join_trial

    return join_trial(hydra_cfg.sweeper, hydra_cfg.runtime.cwd)


def earlier_run(cfg: DictConfig, parent_run_id: str, overrides: list[str]) -> ChildRun | None:
    """In a sweep continued with ``sweep.resume=true``: this job's run from before, if any
    (a run left RUNNING by a lost process is ended KILLED first, to be continued)."""
    from cifar10_mlp.tracking.sweep_runs import earlier_job

    return earlier_job(cfg.tracking.uri, parent_run_id, overrides,
                       cfg.tracking.lost_after_minutes * 60)


def sweep_stopping(cfg: DictConfig, parent_run_id: str | None) -> bool:
    """Whether this job's sweep is being stopped (Ctrl-C, SIGTERM): then it does not start,
    though its launcher still hands it out (Ray runs queued tasks as workers free up)."""
    if parent_run_id is None:
        return False
    from cifar10_mlp.tracking.sweep_runs import stopping

    return stopping(cfg.tracking.uri, parent_run_id)


def composing_config(frame: FrameType) -> bool:
    """Whether ``frame`` or one of its callers runs OmegaConf, or a Hydra config loader (its
    composition calls other libraries too): where a KeyboardInterrupt, met mid-update, turns
    into a config error, so a stop must not land there (``stopping.Interrupter``)."""
    while frame is not None:
        if frame.f_globals.get("__name__", "").partition(".")[0] == "omegaconf" or \
                isinstance(frame.f_locals.get("self"), ConfigLoader):
            return True
        frame = frame.f_back
    return False


class JobLauncher(Launcher):
    """What our launchers share: Hydra's setup, and how a launch begins."""

    config: DictConfig
    hydra_context: HydraContext
    task_function: TaskFunction

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def begin_launch(self) -> Path:
        """Hydra's resolvers and logging set up, as its launchers do; the sweep's folder."""
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        return sweep_dir


def job_config(hydra_context: HydraContext, config: DictConfig, overrides: Sequence[str],
               number: int, launcher: str) -> DictConfig:
    """The config of the sweep's job ``number`` (its overrides applied), logged as Hydra's
    launchers do."""
    log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{launcher}_{number}"
        sweep_config.hydra.job.num = number
    return sweep_config


def run_job_in_worker(hydra_context: HydraContext, sweep_config: DictConfig,
                      task_function: TaskFunction, singleton_state: dict[Any, Any],
                      launch_dir: str) -> JobReturn:
    """One sweep job in a launcher's worker process, run from the launch folder where this
    machine has it, so relative paths in the config mean what they mean to the launching
    shell."""
    if os.path.isdir(launch_dir):
        os.chdir(launch_dir)
    setup_globals()
    Singleton.set_state(singleton_state)
    HydraConfig.instance().set_config(sweep_config)
    return run_job(hydra_context=hydra_context, task_function=task_function,
                   config=sweep_config, job_dir_key="hydra.sweep.dir",
                   job_subdir_key="hydra.sweep.subdir")


def report_lost_job(hydra_context: HydraContext, sweep_config: DictConfig,
                    overrides: Sequence[str], how: str) -> JobReturn:
    """What a launcher returns for a job whose worker died (``how``: e.g. "killed by
    SIGKILL"): the sweep's callbacks hear of it as a FAILED job with :class:`JobLost` (the
    sweep callback ends its run KILLED, ``error: process lost``, for ``sweep.resume=true``
    to continue), and the sweeper gets a failed job's value, NaN (Hydra's basic sweeper would
    abort the whole sweep on a FAILED return)."""
    log.error("%s was lost: %s", job_name(sweep_config.hydra.job.num, filter_overrides(
        overrides), os.environ.get(SWEPT_KEYS_ENV, "").split(",")), how)
    lost = JobReturn(overrides=list(overrides), cfg=sweep_config, hydra_cfg=sweep_config,
                     status=JobStatus.FAILED, task_name=sweep_config.hydra.job.name)
    lost.return_value = JobLost(how)
    hydra_context.callbacks.on_job_end(config=sweep_config, job_return=lost)
    value = replace(lost, status=JobStatus.COMPLETED)
    value.return_value = math.nan
    return value


def failure_of(job_return: JobReturn) -> BaseException:
    """The exception a FAILED job ended with. Hydra's getter raises it, after writing a line
    to stderr that would repeat what the sweep callback says about the job."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            job_return.return_value  # noqa: B018
    except BaseException as error:
        return error
    raise ValueError(f"job {job_return.overrides} did not fail")


@contextmanager
def job_output_to(path: Path) -> Iterator[None]:
    """Send everything this process writes to ``path`` until the block ends: the file
    descriptors 1 and 2 themselves (TensorFlow's C++ output, and Python's where
    ``sys.stdout`` writes to them), and ``sys.stdout`` and ``sys.stderr`` (where they do not,
    as in a notebook's kernel)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(path, "a", buffering=1) as log_file, \
                contextlib.redirect_stdout(log_file), contextlib.redirect_stderr(log_file):
            os.dup2(log_file.fileno(), 1)
            os.dup2(log_file.fileno(), 2)
            try:
                yield
            finally:
                log_file.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        os.close(saved[0])
        os.close(saved[1])
