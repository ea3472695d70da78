"""Hydra launcher that runs sweep jobs as Ray tasks, on a local Ray or an existing cluster.

``hydra-ray-launcher`` collects its jobs with one ``ray.get`` after another, so the
first job whose worker dies (killed, out of memory, node lost) aborts the whole sweep:
the other results are dropped and the sweep's end callbacks never run. Here every
job is collected; a lost one is logged and reported as ``launch.report_lost_job`` says
(its run ends KILLED, ``error: process lost``, for ``sweep.resume=true`` to continue),
so the sweep completes and reports it. Ray itself is imported only when a sweep launches.
"""

# no `from __future__ import annotations`: Hydra imports plugin modules outside
# sys.modules, where dataclasses cannot resolve string annotations
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf

from cifar10_mlp.sweeps.launch import JobLauncher, job_config, report_lost_job, run_job_in_worker

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
    # a job whose worker dies is recorded as lost (KILLED), never run again behind your
    # back: sweep.resume=true continues it
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
        "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_SERVER_CERT_PATH"])


ConfigStore.instance().store(group="hydra/launcher", name="ray", node=RayLauncherConf,
                             provider="cifar10_mlp")


class RayLauncher(JobLauncher):
    def __init__(self, init: DictConfig, remote: DictConfig, forward_env: Sequence[str]) -> None:
        self.init = init
        self.remote = remote
        self.forward_env = list(forward_env)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
               ) -> Sequence[JobReturn]:
        try:
            import ray
        except ImportError as err:
            raise ImportError("hydra/launcher=ray needs Ray: pip install 'cifar10-mlp[cluster]'"
                              ) from err
        sweep_dir = self.begin_launch()
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
        task = ray.remote(run_job_in_worker).options(
            **OmegaConf.to_container(self.remote, resolve=True),
            runtime_env={"env_vars": env})
        jobs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            sweep_config = job_config(self.hydra_context, self.config, overrides, idx, "ray")
            ref = task.remote(self.hydra_context, sweep_config, self.task_function,
                              Singleton.get_state(), os.getcwd())
            jobs.append((overrides, sweep_config, ref))
        return [_collect(ray, self.hydra_context, *job) for job in jobs]


def _collect(ray, hydra_context: HydraContext, overrides: Sequence[str],
             sweep_config: DictConfig, ref) -> JobReturn:
    """The job's return, or a lost job's (``launch.report_lost_job``)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as err:
        return report_lost_job(hydra_context, sweep_config, overrides,
                               f"{type(err).__name__}: {str(err).splitlines()[0]}")
