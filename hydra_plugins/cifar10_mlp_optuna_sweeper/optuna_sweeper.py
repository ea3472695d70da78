"""Hydra sweeper that asks Optuna for trials, runs them as jobs and resumes stored studies.

The packaged hydra-optuna-sweeper pins Optuna < 3, which cannot store studies with
SQLAlchemy 2; this one uses current Optuna through its ask-and-tell interface.
Search spaces use Hydra's override syntax: ``choice(...)``, ``range(...)``,
``interval(a, b)``, with the tags ``log`` (log scale) and ``int`` (integers), e.g.
``tag(log, interval(1e-4, 1e-1))`` or ``tag(int, interval(1, 4))``.
"""

# no `from __future__ import annotations`: Hydra imports plugin modules outside
# sys.modules, where dataclasses cannot resolve string annotations
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import optuna
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted"  # user attribute of trials whose process died mid-run


@dataclass
class OptunaSweeperConf:
    _target_: str = (
        "hydra_plugins.cifar10_mlp_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    )
    study_name: str = "cifar10-mlp"
    # where the study lives; a search run again with the same storage and name resumes
    storage: Optional[str] = "sqlite:///optuna.db"
    direction: str = "maximize"
    n_trials: int = 20
    # trials launched together (a batch for the launcher, e.g. joblib's n_jobs)
    n_jobs: int = 1
    seed: Optional[int] = None
    params: dict[str, str] = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf,
                             provider="cifar10_mlp")


class OptunaSweeper(Sweeper):
    def __init__(self, study_name: str, storage: str | None, direction: str, n_trials: int,
                 n_jobs: int, seed: int | None, params: dict[str, str]) -> None:
        self.study_name = study_name
        self.storage = storage
        self.direction = direction
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.seed = seed
        self.params = dict(params or {})
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        parser = OverridesParser.create()
        searched = [*parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()]),
                    *(o for o in parser.parse_overrides(arguments) if o.is_sweep_override())]
        fixed = [o.input_line for o in parser.parse_overrides(arguments)
                 if not o.is_sweep_override()]
        space = {o.get_key_element(): distribution(o) for o in searched}
        study = optuna.create_study(study_name=self.study_name, storage=self.storage,
                                    direction=self.direction, load_if_exists=True)
        # offset by the trials already stored, so a resumed search draws new values
        # instead of replaying the first session's random sequence
        study.sampler = optuna.samplers.TPESampler(
            seed=None if self.seed is None else self.seed + len(study.trials))
        retry_interrupted(study)
        while (remaining := self.n_trials - counted_trials(study)) > 0:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, remaining))]
            jobs = [[*fixed, *(f"{key}={as_override(v)}" for key, v in trial.params.items())]
                    for trial in trials]
            # job numbers are trial numbers, unique across resumed sessions
            returns = self.launcher.launch(jobs, initial_job_idx=trials[0].number)
            for trial, ret in zip(trials, returns, strict=True):
                value = ret.return_value if ret.status == JobStatus.COMPLETED else None
                if isinstance(value, float) and math.isfinite(value):
                    study.tell(trial, value)
                else:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
            log.info("study %s: %d of %d trials done", self.study_name, counted_trials(study),
                     self.n_trials)
        best = study.best_trial if any(t.state.is_finished() and t.value is not None
                                       for t in study.trials) else None
        if best is not None:
            log.info("best trial %d: value %.4f with %s", best.number, best.value, best.params)


def counted_trials(study: optuna.Study) -> int:
    """Finished trials that count towards n_trials (interrupted ones are run again)."""
    return sum(t.state.is_finished() and not t.user_attrs.get(INTERRUPTED)
               for t in study.get_trials(deepcopy=False))


def retry_interrupted(study: optuna.Study) -> None:
    """Trials left RUNNING by a killed search are closed and their parameters queued again."""
    for trial in study.get_trials(deepcopy=False,
                                  states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
        study._storage.set_trial_state_values(trial._trial_id,
                                              state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, skip_if_exists=False)
        log.info("trial %d was interrupted; queued again with %s", trial.number, trial.params)


def distribution(override: Override) -> optuna.distributions.BaseDistribution:
    """An Optuna distribution from a sweep override such as ``tag(log, interval(1e-4, 1e-1))``."""
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


__all__: Sequence[str] = ("OptunaSweeper", "OptunaSweeperConf")
