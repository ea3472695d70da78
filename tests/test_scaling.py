"""Scaling out: a PostgreSQL-backed MLflow server, sweeps on a local Ray and through submitit.

The server is the one `.ci/run` started (its URI in CIFAR10_MLP_TEST_TRACKING_URI), or one
this module starts with scripts/tracking_server.py and stops by its process ids.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from test_sweep import run, runs_of, sweep_overrides

from cifar10_mlp.tracking.store import open_client, open_experiment

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SERVER_SCRIPT = ROOT / "scripts" / "tracking_server.py"
CLI = Path(sys.executable).parent / "cifar10-mlp"
RAY = ["hydra/launcher=ray", "hydra.launcher.init.num_cpus=2", "hydra.launcher.remote.num_cpus=1"]
PLOTS = {"plots/confusion_matrix.png", "plots/misclassified.png", "plots/learning_curves.png"}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def tracking_server():
    uri = os.environ.get("CIFAR10_MLP_TEST_TRACKING_URI")
    if uri:
        yield uri
        return
    folder = Path(tempfile.mkdtemp(prefix="cifar10-mlp-server-"))
    as_root = ["--allow-root"] if os.geteuid() == 0 else []
    started = subprocess.run([sys.executable, str(SERVER_SCRIPT), "start", "--dir", str(folder),
                              "--port", "0", "--no-auth", *as_root],
                             capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stderr
    pids = json.loads((folder / "server.json").read_text())
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run([sys.executable, str(SERVER_SCRIPT), "stop", "--dir", str(folder)],
                       check=True, timeout=120)
        assert not alive(pids["mlflow_pid"]) and not alive(pids["postgres_pid"])
        shutil.rmtree(folder, ignore_errors=True)


def test_ray_sweep_logs_to_the_postgres_backed_server(tiny_cifar, tmp_path, tracking_server):
    experiment = f"ray-{uuid.uuid4().hex[:8]}"  # a server outlives one test run
    overrides = [o for o in sweep_overrides(tiny_cifar, tmp_path)  # models logged too
                 if not o.startswith("tracking.")]
    done = run("cifar10-mlp", ["-m", *RAY, *overrides, "tracking=server",
                               f"tracking.uri={tracking_server}",
                               f"tracking.experiment={experiment}",
                               f"tracking.registered_model={experiment}",
                               "optimizer.lr=0.01,0.001", "model.dropout=0.0,0.2"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    client, (parent,), children = runs_of(tracking_server, experiment)
    assert parent.info.status == "FINISHED" and parent.data.metrics["n_finished"] == 4
    assert len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {(c.data.params["optimizer.lr"], c.data.params["model.dropout"]) for c in children} \
        == {("0.01", "0.0"), ("0.01", "0.2"), ("0.001", "0.0"), ("0.001", "0.2")}
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.params["trainer.threads"] == "1"  # remote.num_cpus
        assert [m.step for m in client.get_metric_history(child.info.run_id, "loss")] == [1]
        assert 0 <= child.data.metrics["test_accuracy"] <= 1
        plots = {a.path for a in client.list_artifacts(child.info.run_id, "plots")}
        assert plots == PLOTS
        (model,) = client.search_logged_models(
            [child.info.experiment_id], f"source_run_id = '{child.info.run_id}'")
        assert child.data.tags["model_uri"] == f"models:/{model.model_id}"
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/runs.csv", "report/best_confusion_matrix.png"} <= report
    # the best child's model registered once, on the PostgreSQL-backed registry
    (version,) = client.search_model_versions(f"name = '{experiment}'")
    best = client.get_run(parent.data.tags["best_run_id"])
    assert version.run_id == best.info.run_id
    assert version.source == client.get_logged_model(
        best.data.tags["model_uri"].removeprefix("models:/")).artifact_location
    assert client.get_model_version_by_alias(experiment, "best").version == version.version
    # two jobs at a time: the later two found the arrays the first ones decoded
    later = [Path(p) for p in sorted((tmp_path / "multirun").glob("*/*/[23]/job.log"))]
    assert len(later) == 2
    assert all("decoded arrays from the cache" in p.read_text() for p in later)


def test_a_killed_ray_job_is_recorded_lost_and_the_rest_complete(tiny_cifar, tmp_path):
    # job 0 trains one epoch; job 1 would train for minutes and is killed mid-training
    args = ["-m", *RAY, *sweep_overrides(tiny_cifar, tmp_path),
            "trainer.early_stopping.patience=null", "trainer.epochs=1,2000"]
    sweep = subprocess.Popen([str(CLI), *args], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    victim = wait_for_training_job(uri, "trainer.epochs", "2000", sweep)
    os.kill(int(victim.data.tags["pid"]), signal.SIGKILL)  # the Ray worker running it
    output, _ = sweep.communicate(timeout=300)

    # the sweep's own lines (Ray forwards the workers' logs late, interleaved)
    driver = "\n".join(line for line in output.splitlines()
                       if "(run_job_in_worker pid=" not in line)
    assert sweep.returncode == 1, driver[-4000:]
    assert driver.strip().splitlines()[-1].startswith(
        "cifar10-mlp: 1 of 2 sweep jobs lost their process")
    assert "job 1: trainer.epochs=2000 was lost: WorkerCrashedError" in output
    client, (parent,), children = runs_of(uri, "tests")
    assert parent.info.status == "KILLED"  # so sweep.resume=true continues it
    assert parent.data.metrics["n_finished"] == 1 and parent.data.metrics["n_killed"] == 1
    killed = client.get_run(victim.info.run_id)
    assert killed.info.status == "KILLED" and killed.data.tags["error"] == "process lost"
    assert len(client.get_metric_history(killed.info.run_id, "loss")) >= 1  # kept what it had
    assert len(children) == 2  # its own run was closed, not a second one made
    (finished,) = [c for c in children if c.info.run_id != victim.info.run_id]
    assert finished.info.status == "FINISHED" and "test_accuracy" in finished.data.metrics


def wait_for_training_job(uri, param, value, process, timeout=480):
    """The child run with ``param=value`` once it has logged an epoch."""
    client = open_client(uri)  # the sweep may be creating the store right now
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        # under the store's lock: the sweep may be creating the store right now
        experiment = open_experiment(uri, "tests", create=False)
        runs = client.search_runs([experiment],
                                  f"params.`{param}` = '{value}'") if experiment else []
        if runs and client.get_metric_history(runs[0].info.run_id, "loss"):
            return runs[0]
        time.sleep(0.5)
    raise AssertionError(f"no job with {param}={value} logged an epoch:\n"
                         f"{process.stdout.read() if process.poll() is not None else ''}")


def test_submitit_local_sweep_logs_two_children_under_one_parent(tiny_cifar, tmp_path):
    done = run("cifar10-mlp", ["-m", "hydra/launcher=submitit_local",
                               "hydra.launcher.cpus_per_task=1",
                               *sweep_overrides(tiny_cifar, tmp_path),
                               "optimizer.lr=0.01,0.001"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    client, (parent,), children = runs_of(f"sqlite:///{tmp_path / 'mlflow.db'}", "tests")
    assert len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.params["optimizer.lr"] for c in children} == {"0.01", "0.001"}
    assert {c.data.params["trainer.threads"] for c in children} == {"1"}  # cpus_per_task
    # each job ran in a process of its own, as on a cluster
    assert len({c.data.tags["pid"] for c in children}) == 2
    assert client.get_run(parent.info.run_id).data.metrics["n_finished"] == 2


def test_slurm_preset_becomes_the_sbatch_header_a_cluster_needs(tmp_path, monkeypatch):
    import submitit
    from conftest import compose_config
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    launcher = compose_config(["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                               "hydra.launcher.account=vision"], with_hydra=True).hydra.launcher
    assert launcher["_target_"].endswith("SlurmLauncher")
    # the parameters as the launcher hands them to submitit, which rejects any that
    # sbatch does not take; no cluster here, so pretend `srun` exists
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    settings = {key if key in base else f"slurm_{key}": value
                for key, value in OmegaConf.to_container(launcher, resolve=False).items()
                if key not in {"_target_", "submitit_folder", "max_num_timeout", "name"}}
    executor = submitit.AutoExecutor(folder=tmp_path / "jobs", cluster="slurm")
    executor.update_parameters(**settings)
    # a stand-in sbatch keeps the script it is given, as a cluster's would queue it
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\n'
                                    'echo "Submitted batch job 4242"\n')
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert executor.submit(print, "cifar10-mlp").job_id == "4242"
    header = (tmp_path / "submitted.sh").read_text()
    for line in ("--partition=gpu", "--account=vision",
                 f"--cpus-per-task={launcher.cpus_per_task}", f"--mem={launcher.mem_gb}GB",
                 f"--time={launcher.timeout_min}"):
        assert line in header, line
