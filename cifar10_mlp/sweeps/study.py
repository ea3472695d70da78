"""Optuna studies shared by the sweeper and its jobs: storage, samplers, pruners, job trials.

The sweeper (``hydra_plugins/cifar10_mlp_optuna_sweeper``) asks for trials and tells their
outcome; each job, in its own process (basic, processes, joblib, submitit or Ray launcher
alike), joins its trial by number and reports its validation accuracy after every epoch, so the
pruner can stop it there.

**Storage: an Optuna journal file.** Jobs write intermediate values to a trial that the
sweeper's process created and still holds RUNNING, and read the other trials' values to
decide whether to stop. Optuna's RDB storage (``sqlite:///...``, PostgreSQL) is wrapped in
a per-process cache that assumes the process which created a RUNNING trial is the only
one writing it; Optuna calls anything else undefined, and SQLite itself takes one writer
at a time and is unsafe on network filesystems. ``JournalStorage`` with a
``JournalFileBackend`` keeps no such cache: every write is one appended JSON line under a
file lock (a symlink lock, which also works on NFS), and every read first replays what
other processes appended. Every job must reach the file: on one machine it is in the launch
folder; on a cluster, put it on the shared filesystem the jobs already read data from.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from hydra.errors import CompactHydraException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from cifar10_mlp.config.schema import ConfigError

# samplers that optimise one objective only
SINGLE_OBJECTIVE_SAMPLERS = (optuna.samplers.CmaEsSampler,)


class StudyError(ConfigError, CompactHydraException):
    """A search setting that cannot work; the message names the key and what is allowed
    (Hydra prints it alone, without a traceback)."""


def open_storage(journal: str, base_dir: str | Path) -> JournalStorage:
    """The journal storage in file ``journal`` (relative to ``base_dir``, the launch folder)."""
    path = Path(base_dir, journal)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def build_sampler(settings: Mapping[str, Any], seed: int | None) -> optuna.samplers.BaseSampler:
    """The sampler ``hydra.sweeper.sampler`` describes: its Optuna class (``_target_``) with
    its settings as keyword arguments."""
    return instantiate(settings, seed=seed)


def build_pruner(settings: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    """The pruner ``hydra.sweeper.pruner`` describes, as :func:`build_sampler` does.

    Optuna stores no pruner with a study: the sweeper and every job build it from the
    same config, so they agree on when a trial stops.
    """
    return instantiate(settings)


def check_search(objectives: Mapping[str, str], sampler: Mapping[str, Any],
                 pruner: Mapping[str, Any], storage: str, n_jobs: int,
                 choices: Mapping[str, str | None]) -> None:
    """Refuse settings of ``hydra.sweeper`` that cannot work: CMA-ES or pruning with several
    objectives, pruning on anything but validation accuracy (what jobs report each epoch), a
    database as storage, parallel trials on the basic launcher. ``choices``: Hydra's
    ``hydra.runtime.choices``, which name the chosen sampler, pruner and launcher. Called
    before the sweep opens anything."""
    sampler_name = choices.get("hydra/sweeper/sampler")
    pruner_name = choices.get("hydra/sweeper/pruner")
    if n_jobs < 1:
        raise StudyError(f"hydra.sweeper.n_jobs={n_jobs} is not allowed: expected an integer "
                         ">= 1")
    if n_jobs > 1 and choices.get("hydra/launcher") == "basic":
        raise StudyError(f"hydra.sweeper.n_jobs={n_jobs} is not allowed with Hydra's basic "
                         "launcher, which runs one job at a time in this process: choose "
                         "hydra/launcher=processes, joblib, submitit_local, ray or slurm, or "
                         "n_jobs=1")
    if "://" in storage:
        raise StudyError(
            f"hydra.sweeper.storage={storage!r} is not allowed: expected the path of an Optuna "
            "journal file that every job can reach (e.g. optuna.journal); database storages "
            "cache running trials per process, which breaks pruning from the jobs")
    for metric, direction in objectives.items():
        if direction not in ("maximize", "minimize"):
            raise StudyError(f"hydra.sweeper.objectives.{metric}={direction!r} is not allowed: "
                             "expected maximize or minimize")
    if not objectives:
        raise StudyError("hydra.sweeper.objectives is empty: expected at least one metric, "
                         "e.g. {selected_val_accuracy: maximize}")
    if len(objectives) > 1 and issubclass(get_class(sampler["_target_"]),
                                          SINGLE_OBJECTIVE_SAMPLERS):
        raise StudyError(f"hydra/sweeper/sampler={sampler_name} is not allowed with "
                         f"{len(objectives)} objectives: it optimises one; expected tpe, "
                         "random, qmc or nsga2")
    pruning = not issubclass(get_class(pruner["_target_"]), optuna.pruners.NopPruner)
    if pruning and objectives != {"selected_val_accuracy": "maximize"}:
        raise StudyError(f"hydra/sweeper/pruner={pruner_name} is not allowed with objectives "
                         f"{dict(objectives)}: jobs report validation accuracy each epoch, so "
                         "pruning needs the single objective {selected_val_accuracy: maximize}")


class JobTrial:
    """The trial a sweep job reports to, joined from the job's own process."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial
        self.number = trial.number

    def report(self, epoch: int, val_accuracy: float) -> bool:
        """Record the epoch's validation accuracy; True when the pruner stops the trial."""
        self.trial.report(val_accuracy, step=epoch)
        return self.trial.should_prune()


def join_trial(sweeper_cfg: DictConfig, base_dir: str | Path) -> JobTrial | None:
    """The trial ``hydra.sweeper.trial`` names in the study the sweeper config describes;
    None when the job is not an Optuna trial or the study has several objectives (Optuna
    prunes single-objective studies only, so there is nothing to report).

    The one adapter to Optuna: it offers no public way to join, from another process, a
    trial the sweeper asked for, so this builds ``optuna.trial.Trial`` on the storage's trial
    id (pinned by tests/test_search.py's join tests)."""
    number = sweeper_cfg.get("trial")
    if number is None or len(sweeper_cfg.objectives) > 1:
        return None
    if not Path(base_dir, sweeper_cfg.storage).is_file():
        raise StudyError(f"hydra.sweeper.storage={sweeper_cfg.storage}: no such study journal "
                         f"as seen from this job (host {socket.gethostname()}, folder "
                         f"{base_dir}); put it where every worker reaches the same file")
    storage = open_storage(sweeper_cfg.storage, base_dir)
    pruner = build_pruner(OmegaConf.to_container(sweeper_cfg.pruner, resolve=True))
    # a job samples nothing: the random sampler's hooks write nothing to the study
    study = optuna.load_study(study_name=sweeper_cfg.study_name, storage=storage,
                              pruner=pruner, sampler=optuna.samplers.RandomSampler())
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(sweeper_cfg.study_name), number)
    return JobTrial(optuna.trial.Trial(study, trial_id))
