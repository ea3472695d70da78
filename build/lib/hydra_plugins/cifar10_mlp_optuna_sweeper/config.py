"""Settings of the Optuna sweeper: types and allowed keys, registered with Hydra's ConfigStore.

The values, with comments, are in ``conf/hydra/sweeper/optuna.yaml``, which extends
``optuna_schema``; each sampler's and pruner's settings are the keyword arguments of its
Optuna class.
"""

# no `from __future__ import annotations`: Hydra imports plugin modules outside
# sys.modules, where dataclasses cannot resolve string annotations
from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class TPESettings:
    n_startup_trials: int = MISSING
    multivariate: bool = MISSING
    constant_liar: bool = MISSING


@dataclass
class RandomSettings:
    pass


@dataclass
class CmaEsSettings:
    n_startup_trials: int = MISSING
    sigma0: float | None = MISSING
    consider_pruned_trials: bool = MISSING


@dataclass
class QMCSettings:
    qmc_type: str = MISSING
    scramble: bool = MISSING


@dataclass
class NSGA2Settings:
    population_size: int = MISSING
    crossover_prob: float = MISSING
    swapping_prob: float = MISSING


@dataclass
class SamplerSettings:
    tpe: TPESettings = field(default_factory=TPESettings)
    random: RandomSettings = field(default_factory=RandomSettings)
    cmaes: CmaEsSettings = field(default_factory=CmaEsSettings)
    qmc: QMCSettings = field(default_factory=QMCSettings)
    nsga2: NSGA2Settings = field(default_factory=NSGA2Settings)


@dataclass
class NoPrunerSettings:
    pass


@dataclass
class MedianSettings:
    n_startup_trials: int = MISSING
    n_warmup_steps: int = MISSING
    interval_steps: int = MISSING


@dataclass
class SuccessiveHalvingSettings:
    min_resource: int = MISSING
    reduction_factor: int = MISSING
    min_early_stopping_rate: int = MISSING


@dataclass
class HyperbandSettings:
    min_resource: int = MISSING
    max_resource: int = MISSING
    reduction_factor: int = MISSING


@dataclass
class ThresholdSettings:
    lower: float | None = MISSING
    upper: float | None = MISSING
    n_warmup_steps: int = MISSING


@dataclass
class PrunerSettings:
    none: NoPrunerSettings = field(default_factory=NoPrunerSettings)
    median: MedianSettings = field(default_factory=MedianSettings)
    successive_halving: SuccessiveHalvingSettings = field(
        default_factory=SuccessiveHalvingSettings)
    hyperband: HyperbandSettings = field(default_factory=HyperbandSettings)
    threshold: ThresholdSettings = field(default_factory=ThresholdSettings)


@dataclass
class OptunaSweeperConf:
    _target_: str = (
        "hydra_plugins.cifar10_mlp_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    )
    study_name: str = MISSING
    storage: str = MISSING
    objectives: dict[str, str] = MISSING
    n_trials: int = MISSING
    n_jobs: int = MISSING
    batched: bool = MISSING
    seed: int | None = MISSING
    sampler: str = MISSING
    samplers: SamplerSettings = field(default_factory=SamplerSettings)
    pruner: str = MISSING
    pruners: PrunerSettings = field(default_factory=PrunerSettings)
    params: dict[str, str] = MISSING
    trial: int | None = MISSING


ConfigStore.instance().store(group="hydra/sweeper", name="optuna_schema",
                             node=OptunaSweeperConf, provider="cifar10_mlp")
