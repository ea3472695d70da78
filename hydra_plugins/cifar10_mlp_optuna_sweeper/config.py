"""Settings of the Optuna sweeper: types and allowed keys, registered with Hydra's ConfigStore.

The values, with comments, are in ``conf/hydra/sweeper/optuna.yaml``, which extends
``optuna_schema``; the samplers and pruners are its config groups (``sampler/``, ``pruner/``
beside it), each an Optuna class (``_target_``) and its keyword arguments.
"""

# no `from __future__ import annotations`: Hydra imports plugin modules outside
# sys.modules, where dataclasses cannot resolve string annotations
from dataclasses import dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class TPESettings:
    _target_: str = MISSING
    n_startup_trials: int = MISSING
    multivariate: bool = MISSING
    constant_liar: bool = MISSING


@dataclass
class RandomSettings:
    _target_: str = MISSING


@dataclass
class CmaEsSettings:
    _target_: str = MISSING
    n_startup_trials: int = MISSING
    sigma0: Optional[float] = MISSING
    consider_pruned_trials: bool = MISSING


@dataclass
class QMCSettings:
    _target_: str = MISSING
    qmc_type: str = MISSING
    scramble: bool = MISSING


@dataclass
class NSGA2Settings:
    _target_: str = MISSING
    population_size: int = MISSING
    crossover_prob: float = MISSING
    swapping_prob: float = MISSING


@dataclass
class NoPrunerSettings:
    _target_: str = MISSING


@dataclass
class MedianSettings:
    _target_: str = MISSING
    n_startup_trials: int = MISSING
    n_warmup_steps: int = MISSING
    interval_steps: int = MISSING


@dataclass
class SuccessiveHalvingSettings:
    _target_: str = MISSING
    min_resource: int = MISSING
    reduction_factor: int = MISSING
    min_early_stopping_rate: int = MISSING


@dataclass
class HyperbandSettings:
    _target_: str = MISSING
    min_resource: int = MISSING
    max_resource: int = MISSING
    reduction_factor: int = MISSING


@dataclass
class ThresholdSettings:
    _target_: str = MISSING
    lower: Optional[float] = MISSING
    upper: Optional[float] = MISSING
    n_warmup_steps: int = MISSING


@dataclass
class OptunaSweeperConf:
    _target_: str = (
        "hydra_plugins.cifar10_mlp_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    )
    # the sweeper gets its sampler and pruner as settings, not built: it seeds the sampler
    # anew on each resume, and every job builds the same pruner
    _recursive_: bool = False
    study_name: str = MISSING
    storage: str = MISSING
    objectives: dict[str, str] = MISSING
    n_trials: int = MISSING
    n_jobs: int = MISSING
    batched: bool = MISSING
    seed: Optional[int] = MISSING
    # hydra/sweeper/sampler and hydra/sweeper/pruner: an Optuna class (_target_) and its
    # keyword arguments, typed by the schemas below
    sampler: Any = MISSING
    pruner: Any = MISSING
    params: dict[str, str] = MISSING
    trial: Optional[int] = MISSING


ConfigStore.instance().store(group="hydra/sweeper", name="optuna_schema",
                             node=OptunaSweeperConf, provider="cifar10_mlp")
for name, schema in (("tpe", TPESettings), ("random", RandomSettings), ("cmaes", CmaEsSettings),
                     ("qmc", QMCSettings), ("nsga2", NSGA2Settings),
                     ("none_pruner", NoPrunerSettings), ("median_pruner", MedianSettings),
                     ("successive_halving_pruner", SuccessiveHalvingSettings),
                     ("hyperband_pruner", HyperbandSettings),
                     ("threshold_pruner", ThresholdSettings)):
    # outside the groups, so that they are not options: each option's YAML extends its schema
    ConfigStore.instance().store(name=f"optuna_{name}_schema", node=schema,
                                 provider="cifar10_mlp")
