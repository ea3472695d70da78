"""Hydra sweeper that asks Optuna for trials, runs each as a job and prunes them as they train.

The packaged hydra-optuna-sweeper pins Optuna < 3 and never got pruning: its trial object
lives in the sweeper's process, and its batches of ``n_jobs`` keep a pruned trial's slot
busy until the batch ends. Here each job joins its own trial from its own process
(``cifar10_mlp.sweeps.study``; the trial number reaches it as ``hydra.sweeper.trial``), reports
validation accuracy every epoch and stops when the pruner says so; the sweeper keeps
``n_jobs`` trials running and starts the next one as soon as any ends.

Search spaces use Hydra's override syntax: ``choice(...)``, ``range(...)``,
``interval(a, b)``, with the tags ``log`` (log scale) and ``int`` (integers), e.g.
``tag(log, interval(1e-4, 1e-1))`` or ``tag(int, interval(1, 4))``. The values of every
setting are in ``conf/hydra/sweeper/optuna.yaml``.
"""

# no `from __future__ import annotations`: Hydra imports plugin modules outside
# sys.modules, where dataclasses cannot resolve string annotations
import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted"  # user attribute of trials whose process died mid-run


class OptunaSweeper(Sweeper):
    def __init__(self, study_name: str, storage: str, objectives: DictConfig, n_trials: int,
                 n_jobs: int, batched: bool, seed: Optional[int], sampler: DictConfig,
                 pruner: DictConfig,
                 params: DictConfig, trial: Optional[int]) -> None:
        self.study_name = study_name
        self.storage = storage
        self.objectives = dict(objectives)
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.batched = batched
        self.seed = seed
        self.sampler = OmegaConf.to_container(sampler, resolve=True)
        self.pruner = OmegaConf.to_container(pruner, resolve=True)
        self.params = dict(params or {})
        self.launcher = None
        self.choices: dict[str, Optional[str]] = {}  # hydra.runtime.choices

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)
        self.choices = dict(config.hydra.runtime.choices)

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        from cifar10_mlp.sweeps import study as studies

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # this sweeper logs the study
        studies.check_search(self.objectives, self.sampler, self.pruner, self.storage,
                             self.n_jobs, self.choices)
        storage = studies.open_storage(self.storage, os.getcwd())
        parser = OverridesParser.create()
        searched = [*parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()]),
                    *(o for o in parser.parse_overrides(arguments) if o.is_sweep_override())]
        fixed = [o.input_line for o in parser.parse_overrides(arguments)
                 if not o.is_sweep_override()]
        space = {o.get_key_element(): distribution(o) for o in searched}
        study = optuna.create_study(
            study_name=self.study_name, storage=storage, load_if_exists=True,
            directions=list(self.objectives.values()),
            pruner=studies.build_pruner(self.pruner))
        directions = [d.name.lower() for d in study.directions]
        if directions != list(self.objectives.values()):
            raise studies.StudyError(
                f"study {self.study_name!r} in {self.storage} was created to "
                f"{' and '.join(directions)}, which does not fit hydra.sweeper.objectives="
                f"{self.objectives}: resume it with its own objectives or choose another "
                "hydra.sweeper.study_name")
        # offset by the trials already stored, so a resumed search draws new values
        # instead of replaying the first session's random sequence
        study.sampler = studies.build_sampler(
            self.sampler, None if self.seed is None else self.seed + len(study.trials))
        retry_interrupted(study, storage)
        log.info("study %s (%s sampler, %s pruner) in %s: %d of %d trials done, %d at a time%s",
                 self.study_name, self.choices.get("hydra/sweeper/sampler"),
                 self.choices.get("hydra/sweeper/pruner"), self.storage,
                 counted_trials(study), self.n_trials, self.n_jobs,
                 ", in batches" if self.batched else "")
        self._run_trials(study, space, fixed)
        self._log_outcome(study)

    def _run_trials(self, study, space: dict[str, Any], fixed: list[str]) -> None:
        """Keep ``n_jobs`` trials running until ``n_trials`` count as done.

        Not batched, a trial is launched on its own the moment a slot is free: a pruned
        or short trial makes room at once. Batched, ``n_jobs`` trials are launched together
        (one job array on SLURM) and the next batch waits for all of them.
        """
        running: dict[Future, list] = {}
        pool = ThreadPoolExecutor(max_workers=self.n_jobs) if self.n_jobs > 1 else None
        try:
            while True:
                busy = sum(len(trials) for trials in running.values())
                free = 0 if self.batched and running else self.n_jobs - busy
                wanted = min(free, self.n_trials - counted_trials(study) - busy)
                if wanted > 0:
                    trials = [study.ask(space) for _ in range(wanted)]
                    for group in [trials] if self.batched else [[trial] for trial in trials]:
                        running[self._start(pool, group, fixed)] = group
                if not running:
                    return
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    self._tell_all(study, running.pop(future), future)
                # the sweep console's progress line says as much, with the best so far
                log.debug("study %s: %d of %d trials done", self.study_name,
                         counted_trials(study), self.n_trials)
        finally:
            if pool is not None:  # stopped (Ctrl-C): the entry point stops the running jobs
                pool.shutdown(wait=False, cancel_futures=True)

    def _start(self, pool: Optional[ThreadPoolExecutor], trials: list, fixed: list[str]
               ) -> Future:
        """Launch the trials' jobs from a pool thread, or from this one when trials run one
        at a time (so Ctrl-C reaches the job); job numbers are trial numbers, unique across
        resumed sessions."""
        jobs = [self._job_overrides(trial, fixed) for trial in trials]
        if pool is not None:
            return pool.submit(self.launcher.launch, jobs, initial_job_idx=trials[0].number)
        future = Future()
        try:
            future.set_result(self.launcher.launch(jobs, initial_job_idx=trials[0].number))
        except Exception as err:
            future.set_exception(err)
        return future

    def _tell_all(self, study, trials: list, future: Future) -> None:
        try:
            returns = future.result()
        except Exception as err:  # the launcher lost the jobs (e.g. submitit)
            log.error("trials %s: the launcher failed: %s",
                      ", ".join(str(t.number) for t in trials), err)
            returns = [None] * len(trials)
        for trial, ret in zip(trials, returns, strict=True):
            self._tell(study, trial, ret)

    @staticmethod
    def _job_overrides(trial, fixed: list[str]) -> list[str]:
        return [*fixed, *(f"{key}={as_override(v)}" for key, v in trial.params.items()),
                f"hydra.sweeper.trial={trial.number}"]

    def _tell(self, study, trial, ret: Optional[JobReturn]) -> None:
        """Record a job's outcome: PRUNED when its pruner stopped it, COMPLETE with its
        objective metrics, FAIL for a job that failed, was lost or lacks an objective."""
        import optuna

        from cifar10_mlp.runner import RunSummary

        summary = ret.return_value if ret and ret.status == JobStatus.COMPLETED else None
        if not isinstance(summary, RunSummary):
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            log.debug("trial %d failed", trial.number)
            return
        trial.set_user_attr("mlflow_run_id", summary.run_id)
        if summary.pruned_epoch is not None:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            log.debug("trial %d pruned after epoch %d", trial.number, summary.pruned_epoch)
            return
        values = [summary.metrics.get(name, math.nan) for name in self.objectives]
        if all(math.isfinite(v) for v in values):
            study.tell(trial, values)
            log.debug("trial %d: %s", trial.number, ", ".join(
                f"{name} {value:.4g}" for name, value in zip(self.objectives, values,
                                                             strict=True)))
        else:
            missing = [n for n, v in zip(self.objectives, values, strict=True)
                       if not math.isfinite(v)]
            log.error("trial %d failed: its run has no finite %s (metrics: %s)", trial.number,
                      ", ".join(missing), ", ".join(sorted(summary.metrics)))
            study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def _log_outcome(self, study) -> None:
        complete = [t for t in study.get_trials(deepcopy=False)
                    if t.state.name == "COMPLETE"]
        if not complete:
            log.info("study %s: no trial completed", self.study_name)
        elif len(self.objectives) == 1:
            best = study.best_trial
            log.info("best trial %d: value %.4f with %s", best.number, best.value, best.params)
        else:  # the sweep's report marks the Pareto front of its runs
            log.info("study %s: %d trials completed", self.study_name, len(complete))


def counted_trials(study) -> int:
    """Finished trials that count towards n_trials: complete, pruned or failed (interrupted
    ones are run again)."""
    return sum(t.state.is_finished() and not t.user_attrs.get(INTERRUPTED)
               for t in study.get_trials(deepcopy=False))


def retry_interrupted(study, storage) -> None:
    """Trials left RUNNING by a killed search are closed and their parameters queued again."""
    import optuna

    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(study.study_name), trial.number)
        storage.set_trial_user_attr(trial_id, INTERRUPTED, True)
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, skip_if_exists=False)
        log.info("trial %d was interrupted; queued again with %s", trial.number, trial.params)


def distribution(override: Override):
    """An Optuna distribution from a sweep override such as ``tag(log, interval(1e-4, 1e-1))``."""
    import optuna

    sweep = override.value()
    if isinstance(sweep, ChoiceSweep):
        return optuna.distributions.CategoricalDistribution(
            [as_override(v) if isinstance(v, list | dict) else v for v in sweep.list])
    if isinstance(sweep, RangeSweep):
        return optuna.distributions.CategoricalDistribution(list(override.sweep_iterator()))
    if isinstance(sweep, IntervalSweep):
        log_scale = "log" in sweep.tags
        if "int" in sweep.tags:  # Hydra parses interval bounds as floats
            return optuna.distributions.IntDistribution(int(sweep.start), int(sweep.end),
                                                        log=log_scale)
        return optuna.distributions.FloatDistribution(sweep.start, sweep.end, log=log_scale)
    raise ValueError(f"{override.input_line}: use choice(...), range(...) or interval(...)")


def as_override(value: Any) -> str:
    """A value written as Hydra override text, e.g. [1024, 512] -> "[1024,512]"."""
    if isinstance(value, list | tuple):
        return "[" + ",".join(as_override(v) for v in value) + "]"
    return str(value)


__all__: Sequence[str] = ("OptunaSweeper",)
