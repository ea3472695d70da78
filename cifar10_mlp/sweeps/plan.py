"""A multirun's plan, known before any job starts: a grid's jobs in Hydra's order, or an
Optuna search's settings (checked here), the keys the jobs differ in, and what names and
tags the sweep's parent run."""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import CompactHydraException
from omegaconf import DictConfig

from cifar10_mlp.errors import UserError
from cifar10_mlp.sweeps.launch import job_overrides

SWEPT_KEYS_TAG = "sweep_keys"  # of a parent run: the keys its jobs differ in


class SweepError(UserError, CompactHydraException):
    """A sweep that cannot start as asked (Hydra prints the message alone)."""


@dataclass(frozen=True)
class SweepPlan:
    """What a multirun will run, known before any job starts."""

    search: bool  # an Optuna search (else a grid)
    swept_keys: list[str]  # the keys whose values differ between jobs
    planned: list[list[str]] | None  # a grid's jobs, in Hydra's order
    resume_key: str  # the study (journal#name), or a hash of the grid's jobs
    run_name: str  # the parent run's, e.g. "sweep model.hidden x optimizer.lr (4 jobs)"
    tags: dict[str, str]
    params: dict[str, str]  # sweep.<key>: its values as written


def plan_sweep(config: DictConfig) -> SweepPlan:
    """The sweep's plan from its config; an Optuna search's settings are checked here, before
    anything is opened, so one that cannot work leaves no run behind."""
    if config.hydra.launcher.get("n_jobs") == 0:  # processes and joblib: jobs at once
        raise SweepError("hydra.launcher.n_jobs=0 is not allowed: expected the number of jobs "
                         "to run at once (>= 1), or -1 for one per core, -2 for all but one, ...")
    sweeper = config.hydra.sweeper
    search_space = dict(sweeper.get("params") or {})
    arguments = job_overrides(config.hydra.overrides.task)
    params = {f"sweep.{key}": value for key, value in (o.split("=", 1) for o in arguments
                                                       if "=" in o)}
    params |= {f"sweep.{key}": str(value) for key, value in search_space.items()}
    tags = {"sweep_command": " ".join(["cifar10-mlp", *sys.argv[1:]])}
    study = sweeper.get("study_name")
    if study:
        from cifar10_mlp.sweeps.study import check_search

        choices = config.hydra.runtime.choices
        check_search(sweeper.objectives, sweeper.sampler, sweeper.pruner, sweeper.storage,
                     sweeper.n_jobs, choices)
        parser = OverridesParser.create()
        swept = [*search_space, *(o.get_key_element() for o in parser.parse_overrides(arguments)
                                  if o.is_sweep_override())]
        tags |= {"sweep_objectives": json.dumps(dict(sweeper.objectives)),
                 "sweep_sampler": choices["hydra/sweeper/sampler"],
                 "sweep_pruner": choices["hydra/sweeper/pruner"],
                 SWEPT_KEYS_TAG: ",".join(swept)}
        return SweepPlan(True, swept, None, f"{Path(sweeper.storage).resolve()}#{study}",
                         f"search {study}: {' x '.join(swept)} ({sweeper.n_trials} trials)",
                         tags, params)
    planned = grid_jobs(search_space, arguments)
    swept = [key for key, values in _values_by_key(planned).items() if len(set(values)) > 1]
    key = "grid:" + hashlib.sha1(json.dumps(sorted(map(" ".join, planned))).encode()
                                 ).hexdigest()[:16]
    return SweepPlan(False, swept, planned, key,
                     f"sweep {' x '.join(swept) or '(one job)'} ({len(planned)} jobs)",
                     {**tags, SWEPT_KEYS_TAG: ",".join(swept)}, params)


def _values_by_key(jobs: list[list[str]]) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for job in jobs:
        for key, _, value in (o.partition("=") for o in job):
            values.setdefault(key, []).append(value)
    return values


def grid_jobs(params: dict[str, str], arguments: list[str]) -> list[list[str]]:
    """The jobs Hydra's basic sweeper makes of its ``params`` and the command's overrides,
    in its order (job N is the N-th): one per combination of the swept values."""
    values: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(
            [*(f"{k}={v}" for k, v in params.items()), *arguments]):
        key = override.get_key_element()
        values[key] = ([f"{key}={v}" for v in override.sweep_string_iterator()]
                       if override.is_sweep_override()
                       else [f"{key}={override.get_value_element_as_str()}"])
    return [list(job) for job in itertools.product(*values.values())]
