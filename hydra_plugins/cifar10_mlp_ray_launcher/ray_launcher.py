"""Hydra launcher that runs sweep jobs as Ray tasks, on a local Ray or an existing cluster.

``hydra-ray-launcher`` collects its jobs with one ``ray.get`` after another, so the
first job whose worker dies (killed, out of memory, node lost) aborts the whole sweep:
the other results are dropped and the sweep's end callbacks never run. Here every
job is collected; a lost one is logged, reported to the callbacks as a FAILED job
(the sweep callback records its run as FAILED) and returned to the sweeper as a
failed job's value (NaN, as ``cifar10-mlp`` returns for a job that raised), so the
sweep completes and reports it. Ray itself is imported only when a sweep launches.
"""

# no `from __future__ import annotations`: Hydra imports plugin modules outside
# sys.modules, where dataclasses cannot resolve string annotations
import logging
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
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
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)
_RAY_INIT = threading.Lock()


@dataclass
class RayInitConf:
    # null: start a Ray instance on this machine for the sweep; "auto" or
    # "ray://<head>:10001": run the jobs on that existing cluster
    address: Optional[str] = None
    # CPUs of a local instance (null: all of this machine's); ignored for a cluster
    num_cpus: Optional[int] = None
    # a local instance listens on loopback only; null lets Ray pick the node's address
    # (needed when joining a cluster from this machine)
    _node_ip_address: Optional[str] = "127.0.0.1"
    include_dashboard: bool = False


@dataclass
class RayRemoteConf:
    # CPUs per job: Ray runs as many jobs at once as the CPUs allow, and each job's
    # TensorFlow uses this many threads
    num_cpus: int = 1
    # a job whose worker dies is recorded as failed, never run again behind your back
    max_retries: int = 0


@dataclass
class RayLauncherConf:
    _target_: str = "hydra_plugins.cifar10_mlp_ray_launcher.ray_launcher.RayLauncher"
    init: RayInitConf = field(default_factory=RayInitConf)
    remote: RayRemoteConf = field(default_factory=RayRemoteConf)
    # environment variables of the launching shell that the jobs get on every node
    # (the sweep's parent run id and swept keys are set by the sweep callback before the
    # launch)
    forward_env: list[str] = field(default_factory=lambda: [
        "CIFAR10_MLP_SWEEP_PARENT_RUN_ID", "CIFAR10_MLP_SWEPT_KEYS", "CIFAR10_PATH",
        "MLFLOW_TRACKING_URI"])


ConfigStore.instance().store(group="hydra/launcher", name="ray", node=RayLauncherConf,
                             provider="cifar10_mlp")


class RayLauncher(Launcher):
    def __init__(self, init: DictConfig, remote: DictConfig, forward_env: Sequence[str]) -> None:
        self.init = init
        self.remote = remote
        self.forward_env = list(forward_env)
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
               ) -> Sequence[JobReturn]:
        try:
            import ray
        except ImportError as err:
            raise ImportError("hydra/launcher=ray needs Ray: pip install 'cifar10-mlp[cluster]'"
                              ) from err
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with _RAY_INIT:  # an Optuna search launches its trials from several threads
            if not ray.is_initialized():
                init = {k: v for k, v in OmegaConf.to_container(self.init, resolve=True).items()
                        if v is not None}
                ray.init(**init)
        resources = ray.cluster_resources().get("CPU", 0)
        log.info("Ray launcher: %d jobs on %s (%g CPUs, %s per job), sweep output dir: %s",
                 len(job_overrides), self.init.address or "a local Ray instance", resources,
                 self.remote.num_cpus, sweep_dir)
        # read now, after the sweep callback has set the parent run id
        env = {name: os.environ[name] for name in self.forward_env if name in os.environ}
        task = ray.remote(_run_job).options(
            **OmegaConf.to_container(self.remote, resolve=True),
            runtime_env={"env_vars": env})
        jobs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            sweep_config = self.hydra_context.config_loader.load_sweep_config(
                self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = f"ray_{idx}"
                sweep_config.hydra.job.num = idx
            ref = task.remote(self.hydra_context, sweep_config, self.task_function,
                              Singleton.get_state(), os.getcwd())
            jobs.append((idx, overrides, sweep_config, ref))
        return [_collect(ray, self.hydra_context.callbacks, *job) for job in jobs]


def _run_job(hydra_context: HydraContext, sweep_config: DictConfig,
             task_function: TaskFunction, singleton_state: dict[Any, Any],
             launch_dir: str) -> JobReturn:
    """One job in a Ray worker, run from the launch directory where this node has it,
    so relative paths in the config mean what they mean to the launching shell."""
    if os.path.isdir(launch_dir):
        os.chdir(launch_dir)
    setup_globals()
    Singleton.set_state(singleton_state)
    HydraConfig.instance().set_config(sweep_config)
    return run_job(hydra_context=hydra_context, task_function=task_function,
                   config=sweep_config, job_dir_key="hydra.sweep.dir",
                   job_subdir_key="hydra.sweep.subdir")


def _collect(ray, callbacks, idx: int, overrides: Sequence[str], sweep_config: DictConfig,
             ref) -> JobReturn:
    """The job's return; for a job whose worker was lost, the callbacks hear of it as a
    FAILED job and the sweeper gets a failed job's value, NaN (Hydra's basic sweeper
    would abort the whole sweep on a FAILED return)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as err:
        log.error("job #%d (%s) was lost: %s", idx, " ".join(filter_overrides(overrides)),
                  str(err).splitlines()[0])
        lost = JobReturn(overrides=list(overrides), cfg=sweep_config, hydra_cfg=sweep_config,
                         status=JobStatus.FAILED, _return_value=err,
                         task_name=sweep_config.hydra.job.name)
        callbacks.on_job_end(config=sweep_config, job_return=lost)
        return replace(lost, status=JobStatus.COMPLETED, _return_value=math.nan)
