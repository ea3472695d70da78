"""Multirun bookkeeping as a Hydra callback: one MLflow parent run per sweep, a report at the end.

The parent (with the SQLite store and experiment) is created in the launching process
before any job starts; jobs find its id in ``launch.PARENT_RUN_ENV``, which every
launcher's workers inherit, and open their runs as its children.

A sweep stopped by Ctrl-C or SIGTERM ends through :meth:`SweepTracker.stop`, which the
callback hands to the entry point with its held signals (:func:`stopping.release_held`) and
the entry point calls: its jobs end KILLED (those that did not see the signal get SIGTERM), the
parent ends KILLED with a partial report, and one line says how to continue it. A grid
sweep continues with ``sweep.resume=true``; an Optuna search, by running it again.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cifar10_mlp import stopping
from cifar10_mlp.errors import JobLost, UserError
from cifar10_mlp.sweeps.launch import (
    JOB_LOG,
    PARENT_RUN_ENV,
    SWEPT_KEYS_ENV,
    failure_of,
    fill_launch_settings,
    job_overrides,
)
from cifar10_mlp.sweeps.plan import SweepError, plan_sweep

if TYPE_CHECKING:
    from cifar10_mlp.sweeps.console import SweepConsole

log = logging.getLogger(__name__)


def _fails_the_sweep(hook):
    """Hydra turns an exception raised by a callback into a warning and goes on: a sweep
    that cannot start, or cannot write its report, must stop and say why instead."""

    @functools.wraps(hook)
    def checked(self, *args, **kwargs):
        try:
            return hook(self, *args, **kwargs)
        except UserError as err:
            raise SystemExit(f"cifar10-mlp: error: {err}") from err
        except Exception as err:
            log.exception("the sweep's %s failed", hook.__name__)
            raise SystemExit(f"cifar10-mlp: the sweep's {hook.__name__} failed: "
                             f"{type(err).__name__}: {err}") from err

    return checked


class SweepTracker(Callback):
    """Opens the sweep's parent run before the jobs, and closes it with a report after them."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.config: DictConfig | None = None
        self.planned: list[list[str]] | None = None  # a grid's jobs, in Hydra's order
        self.n_lost = 0  # jobs whose worker process died, as their launcher reports
        self.n_unrecorded = 0  # lost jobs whose run could not be written
        self.console: SweepConsole | None = None
        self.closed = False  # ended, by its end or a stop: nothing left for a stop to do

    def __getstate__(self) -> dict:
        # joblib sends the callbacks to its workers: the console stays in this process
        return {**self.__dict__, "console": None}

    @_fails_the_sweep
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        # imported here, not at the top: Hydra builds callbacks for every run, and a
        # single run must not import MLflow and TensorFlow before its config is checked
        from cifar10_mlp.stopping import uninterrupted
        from cifar10_mlp.sweeps.console import SweepConsole
        from cifar10_mlp.tracking import sweep_runs

        plan = plan_sweep(config)
        uri, lost_after = config.tracking.uri, config.tracking.lost_after_minutes * 60
        resumes = plan.search or config.sweep.resume
        earlier = (sweep_runs.latest_sweep(uri, config.tracking.experiment, plan.resume_key)
                   if resumes else None)
        if config.sweep.resume and not plan.search and (earlier is None
                                                         or earlier[1] == "FINISHED"):
            raise SweepError(
                f"sweep.resume=true: no interrupted sweep of these jobs in experiment "
                f"{config.tracking.experiment!r} of {uri}"
                + (f" (the latest, run {earlier[0]}, finished)" if earlier else ""))
        # a Ctrl-C waits until the parent is open and the sweep's stop handed over: then
        # that stop ends it KILLED, rather than leaving it RUNNING
        with uninterrupted():
            if earlier is not None:
                self.parent_run_id = earlier[0]
                sweep_runs.reopen_sweep(uri, self.parent_run_id, lost_after)
                log.info("continuing the sweep of parent MLflow run %s", self.parent_run_id)
            else:
                self.parent_run_id = sweep_runs.open_sweep(
                    uri, config.tracking.experiment, plan.run_name, plan.tags, plan.params,
                    plan.resume_key)
                log.info("%s: parent MLflow run %s", plan.run_name, self.parent_run_id)
            os.environ[PARENT_RUN_ENV] = self.parent_run_id
            os.environ[SWEPT_KEYS_ENV] = ",".join(plan.swept_keys)
            self.planned, self.config = plan.planned, config
            # Hydra calls on_multirun_end only when the sweep returns: a sweeper or launcher
            # that raises would leave the parent RUNNING for ever
            atexit.register(self._end_unfinished, uri, self.parent_run_id)
        log.info("each job's output: %s in its folder under %s", JOB_LOG,
                 config.hydra.sweep.dir)
        self.console = SweepConsole(uri, self.parent_run_id, len(plan.planned or ()) or
                                    config.hydra.sweeper.n_trials, config.sweep.poll_seconds
                                    ).start()
        # from now on a signal stops the sweep where it is, and the entry point ends it
        stopping.release_held(stop_work=self.stop)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs) -> None:
        """A job that ended FAILED here was lost by its launcher (``cifar10-mlp`` itself turns
        errors into FAILED runs and a NaN): record it, so no job of the sweep goes missing.
        One whose worker died (:class:`JobLost`) ends KILLED, to be continued."""
        if self.parent_run_id is None or job_return.status != JobStatus.FAILED:
            return
        from cifar10_mlp.tracking import sweep_runs

        job_cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        fill_launch_settings(job_cfg, config.hydra, sweeping=True)
        # the job's own overrides, as its run records them (not the sweeper's hydra.* ones)
        overrides = [o for o in job_overrides(job_return.overrides)
                     if not o.startswith(("hydra.", "hydra/"))]
        error = failure_of(job_return)
        self.n_lost += isinstance(error, JobLost)
        try:
            sweep_runs.record_lost_job(job_cfg, overrides, self.parent_run_id, error)
        except Exception:  # the other jobs go on; the sweep fails at its end
            log.exception("could not record the lost job's run")
            self.n_unrecorded += 1

    @_fails_the_sweep
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.parent_run_id is None:
            return
        from cifar10_mlp.sweeps import report_files

        self.console.close()
        # a sweep with lost jobs ends KILLED, as a stopped one: sweep.resume=true continues it
        written = report_files.write(config.tracking.uri, self.parent_run_id,
                                     Path(config.hydra.sweep.dir),
                                     config.tracking.lost_after_minutes * 60, self.planned,
                                     end_as="KILLED" if self.n_lost else "FINISHED")
        self._close()
        print(written.text(self.parent_run_id))
        outcome = written.outcome
        if config.tracking.registered_model and outcome.best is not None:
            from cifar10_mlp.tracking import registry

            registered = registry.register_best(
                config.tracking.uri, self.parent_run_id, outcome.best.run_id,
                config.tracking.registered_model, config.tracking.registered_alias)
            print(f"the best run's model ({outcome.best.name.split(': ')[0]}): registered as "
                  f"{registered}\n")
        problems = []
        total = (outcome.n_finished + outcome.n_pruned + outcome.n_failed
                 + outcome.n_interrupted)
        if outcome.n_failed:
            problems.append(f"{outcome.n_failed} of {total} sweep jobs failed; see the report "
                            "above and their runs' `error` tags")
        if self.n_lost:
            again = ("run the same command again to continue the study" if self.planned is None
                     else "run the same command with sweep.resume=true to continue them")
            problems.append(f"{self.n_lost} of {total} sweep jobs lost their process (killed, "
                            "e.g. out of memory, or stopped alone): their runs are KILLED with "
                            f"every finished epoch; {again}")
        if self.n_unrecorded:
            problems.append(f"{self.n_unrecorded} sweep jobs were lost by their launcher and "
                            "could not be recorded; see the errors above")
        if problems:
            sys.exit("cifar10-mlp: " + "; ".join(problems))

    def stop(self, reason: str) -> str | None:
        """End a sweep that a signal stopped: its jobs KILLED, the parent KILLED with a
        partial report; the one line to print (what stopped, how to continue), or None if
        the sweep had ended already. The caller ignores further signals meanwhile, so a
        second Ctrl-C cannot cut this short."""
        if self.closed:
            return None
        from cifar10_mlp.sweeps import report_files
        from cifar10_mlp.tracking import sweep_runs

        config = self.config
        self.console.close(look_again=False)
        sweep_runs.stop_children(config.tracking.uri, self.parent_run_id, reason)
        outcome = report_files.write(config.tracking.uri, self.parent_run_id,
                                     Path(config.hydra.sweep.dir),
                                     config.tracking.lost_after_minutes * 60, self.planned,
                                     end_as="KILLED", stopped_by=reason).outcome
        self._close()
        if self.planned is None:
            n_trials = config.hydra.sweeper.n_trials
            done = outcome.n_finished + outcome.n_pruned + outcome.n_failed
            return (f"cifar10-mlp: search stopped by {reason}: {done} of {n_trials} trials done, "
                    f"{outcome.n_interrupted} interrupted (KILLED); run the same command again "
                    "to continue the study")
        return (f"cifar10-mlp: sweep stopped by {reason}: {outcome.n_finished} of "
                f"{len(self.planned)} jobs finished, {outcome.n_interrupted} interrupted "
                f"(KILLED, checkpoints kept), {outcome.n_not_started} not started; run the same "
                "command with sweep.resume=true to continue it")

    def _close(self) -> None:
        atexit.unregister(self._end_unfinished)
        os.environ.pop(PARENT_RUN_ENV, None)
        os.environ.pop(SWEPT_KEYS_ENV, None)
        self.closed = True

    @staticmethod
    def _end_unfinished(uri: str, parent_run_id: str) -> None:
        from cifar10_mlp.tracking import sweep_runs

        try:
            sweep_runs.end_unfinished(uri, parent_run_id)
        except Exception as err:  # at exit: say so, never mask how the sweep ended
            log.warning("could not close the sweep's parent run %s: %s", parent_run_id, err)
