"""Sweeps end to end: multiruns as subprocesses on the tiny archive, a real SQLite store."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_overrides
from mlflow import MlflowClient

from cifar10_mlp.tracking.store import open_experiment

CLI = Path(sys.executable).parent
GRID = ["model.hidden=[16],[32,16]", "optimizer.lr=0.01,0.001"]


def sweep_overrides(tiny, tmp_path):
    """The tiny run's overrides for a sweep job: 1 epoch, no model logged (tests/test_cli.py
    covers that), widths left for the sweep to choose."""
    return [o for o in tiny_overrides(tiny, tmp_path)
            if not o.startswith(("trainer.epochs", "model.hidden"))] + [
        "trainer.epochs=1", "tracking.log_model=false"]


def run(command, args, cwd, timeout=600):
    return subprocess.run([str(CLI / command), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def runs_of(uri, experiment):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


@pytest.mark.slow
def test_parallel_grid_sweep_groups_runs_under_one_parent_with_a_report(tiny_cifar, tmp_path):
    args = ["-m", "hydra/launcher=processes", "hydra.launcher.n_jobs=4",
            *sweep_overrides(tiny_cifar, tmp_path), *GRID]
    done = run("cifar10-mlp", args, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, (parent,), children = runs_of(uri, "tests")
    assert len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.info.status for c in children} == {"FINISHED"}
    for child in children:  # every parallel job's metrics arrived
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy")] \
            == [1]
        assert "test_accuracy" in child.data.metrics
        assert child.data.params["trainer.threads"] == str(max(1, os.cpu_count() // 4))
    # the parent records the command, the swept values and the outcome
    assert parent.data.params["sweep.model.hidden"] == "[16],[32,16]"
    assert parent.data.params["sweep.optimizer.lr"] == "0.01,0.001"
    assert "optimizer.lr=0.01,0.001" in parent.data.tags["sweep_command"]
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["n_finished"] == 4 and parent.data.metrics["n_failed"] == 0
    best = max(children, key=lambda c: c.data.metrics["selected_val_accuracy"])
    assert parent.data.metrics["best_selected_val_accuracy"] == \
        best.data.metrics["selected_val_accuracy"]
    report_names = ("index.html", "runs.csv", "runs.md", "best_confusion_matrix.png",
                    "best_learning_curves.png", "validation_curves.png",
                    "parallel_coordinates.png", "val_accuracy_by_hyperparameter.png")
    report_files = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {f"report/{name}" for name in report_names} <= report_files
    assert parent.info.run_name == "sweep model.hidden x optimizer.lr (4 jobs)"
    assert {c.info.run_name.split(": ")[1] for c in children} == {
        "model.hidden=[16] optimizer.lr=0.01", "model.hidden=[16] optimizer.lr=0.001",
        "model.hidden=[32,16] optimizer.lr=0.01", "model.hidden=[32,16] optimizer.lr=0.001"}
    # the terminal shows the table: a header and one row per job
    assert "| run | status | model.hidden | optimizer.lr |" in done.stdout
    assert sum(line.startswith("| job ") for line in done.stdout.splitlines()) == 4
    (sweep_dir,) = (tmp_path / "multirun").glob("*/*")
    # the same files beside the page, each figure a PNG
    assert all((sweep_dir / name).is_file() for name in report_names)
    assert (sweep_dir / "parallel_coordinates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv_lines = (sweep_dir / "runs.csv").read_text().splitlines()
    assert csv_lines[0].startswith("run,status,model.hidden,optimizer.lr,selected_val_accuracy")
    assert len(csv_lines) == 5

    # on demand, by experiment name: the same table from the store
    again = run("cifar10-mlp-report", ["tests", "--tracking-uri", uri, "--out",
                                       str(tmp_path / "again")], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "again" / "runs.md").read_text() == (sweep_dir / "runs.md").read_text()


@pytest.mark.slow
def test_a_failing_job_is_recorded_and_the_others_finish(tiny_cifar, tmp_path):
    args = ["-m", *sweep_overrides(tiny_cifar, tmp_path), "model.hidden=[16]",
            "model.dropout=0.1,1.5", "optimizer.lr=0.01,1e12"]
    done = run("cifar10-mlp", args, tmp_path)
    assert done.returncode != 0
    assert "3 of 4 sweep jobs failed" in done.stderr
    _, (parent,), children = runs_of(f"sqlite:///{tmp_path / 'mlflow.db'}", "tests")
    by_values = {(c.data.params["model.dropout"], c.data.params["optimizer.lr"]): c
                 for c in children}
    assert by_values[("0.1", "0.01")].info.status == "FINISHED"
    diverged = by_values[("0.1", "1000000000000.0")]
    assert diverged.info.status == "FAILED"
    assert diverged.data.tags["error"].startswith("TrainingDiverged: training loss became")
    bad_config = by_values[("1.5", "0.01")]
    assert bad_config.info.status == "FAILED"
    assert bad_config.data.tags["error"] == (
        "ConfigError: model.dropout=1.5 is not allowed: expected a value in [0, 1)")
    assert "FAILED" in done.stdout and "ConfigError" in done.stdout  # listed in the summary


def test_a_job_lost_before_its_run_opened_is_recorded_killed_with_its_config(
        tiny_cifar, tmp_path, monkeypatch):
    from conftest import compose_config
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import open_dict

    from cifar10_mlp.errors import JobLost
    from cifar10_mlp.sweeps.callback import SweepTracker
    from cifar10_mlp.sweeps.launch import PARENT_RUN_ENV, SWEPT_KEYS_ENV

    monkeypatch.setenv(PARENT_RUN_ENV, "")  # restored after the test
    monkeypatch.setenv(SWEPT_KEYS_ENV, "")
    config = compose_config([*sweep_overrides(tiny_cifar, tmp_path), "optimizer.lr=0.01"],
                            with_hydra=True)
    tracker = SweepTracker()
    tracker.on_multirun_start(config)
    # what a launcher reports for a job whose process died while starting (job 3), and for
    # one that failed otherwise (job 4)
    for number, lr, error in ((3, "0.01", JobLost("killed by SIGKILL")),
                              (4, "0.001", RuntimeError("unpicklable return"))):
        with open_dict(config):
            config.hydra.job.num = number
            config.optimizer.lr = float(lr)
        tracker.on_job_end(config, JobReturn(overrides=[f"optimizer.lr={lr}"],
                                             status=JobStatus.FAILED, _return_value=error))

    client, (parent,), children = runs_of(f"sqlite:///{tmp_path / 'mlflow.db'}", "tests")
    lost, failed = sorted(children, key=lambda run: run.info.run_name)
    assert lost.info.status == "KILLED" and lost.info.run_name == "job 3"
    assert lost.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert lost.data.tags["error"] == "process lost"  # so sweep.resume=true runs it again
    assert lost.data.params["optimizer.lr"] == "0.01"  # its config, as for any job
    assert lost.data.tags["overrides"] == "optimizer.lr=0.01"
    assert failed.info.status == "FAILED" and failed.info.run_name == "job 4"
    assert failed.data.tags["error"] == "RuntimeError: unpicklable return"
    assert tracker.n_lost == 1


def test_n_jobs_zero_is_refused_before_the_sweep_opens_anything(tmp_path):
    from conftest import compose_config

    from cifar10_mlp.sweeps.plan import SweepError, plan_sweep

    config = compose_config(["hydra/launcher=processes", "hydra.launcher.n_jobs=0",
                             f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"], with_hydra=True)
    with pytest.raises(SweepError, match=r"hydra.launcher.n_jobs=0 is not allowed: expected "
                                         r"the number of jobs to run at once \(>= 1\), or -1"):
        plan_sweep(config)
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("n_jobs, cores, at_once, threads", [
    (2, 8, 2, 4), (-1, 8, 8, 1), (-2, 8, 7, 1), (16, 8, 16, 1), (-1, 1, 1, 1)])
def test_parallel_jobs_share_the_cores(n_jobs, cores, at_once, threads, monkeypatch):
    from omegaconf import OmegaConf

    from cifar10_mlp.sweeps.launch import cpus_per_job, jobs_at_once

    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert jobs_at_once(n_jobs) == at_once
    assert cpus_per_job(OmegaConf.create({"n_jobs": n_jobs})) == threads


def terminal_sigint():
    """In the child: take SIGINT as a terminal delivers it, even under a backgrounded pytest
    (whose shell made children ignore it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_ctrl_c_stops_a_joblib_grid_cleanly_and_sweep_resume_completes_it(tiny_cifar, tmp_path):
    # jobs 0-1 train 1 epoch and finish; jobs 2-3 train 20 and are stopped on the way
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
            *(o for o in sweep_overrides(tiny_cifar, tmp_path) if not o.startswith("trainer.")),
            "trainer.batch_size=16", "trainer.verbose=0", "trainer.early_stopping.patience=null",
            "trainer.epochs=1,20", "optimizer.lr=0.01,0.001"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    sweep = subprocess.Popen([str(CLI / "cifar10-mlp"), *args], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True, preexec_fn=terminal_sigint)
    deadline = time.monotonic() + 300
    while True:  # until jobs 2 and 3 have each logged 2 epochs
        assert sweep.poll() is None and time.monotonic() < deadline, "no long job got going"
        time.sleep(0.5)
        # under the store's lock: the sweep may be creating it right now
        experiment = open_experiment(uri, "tests", create=False)
        long = [c for c in client.search_runs([experiment])
                if c.data.params.get("trainer.epochs") == "20"] if experiment else []
        if len(long) == 2 and all(len(client.get_metric_history(c.info.run_id, "loss")) >= 2
                                  for c in long):
            break
    os.killpg(sweep.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
    _, stderr = sweep.communicate(timeout=120)

    assert sweep.returncode == 1
    assert stderr.strip().splitlines()[-1] == (
        "cifar10-mlp: sweep stopped by Ctrl-C: 2 of 4 jobs finished, 2 interrupted (KILLED, "
        "checkpoints kept), 0 not started; run the same command with sweep.resume=true to "
        "continue it")
    assert "Traceback" not in stderr
    _, (parent,), children = runs_of(uri, "tests")
    assert parent.info.status == "KILLED" and len(children) == 4
    assert not [c for c in children if c.info.status == "RUNNING"]
    by_job = {c.info.run_name.split(":")[0]: c for c in children}
    assert {n: by_job[n].info.status for n in by_job} == {
        "job 0": "FINISHED", "job 1": "FINISHED", "job 2": "KILLED", "job 3": "KILLED"}
    assert all((tmp_path / "checkpoints" / by_job[n].info.run_id).is_dir()
               for n in ("job 2", "job 3"))  # kept for the resume

    done = run("cifar10-mlp", [*args, "sweep.resume=true"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    _, (again,), children = runs_of(uri, "tests")
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    for child in children:  # the same runs, each epoch logged once
        assert child.info.run_id == by_job[child.info.run_name.split(":")[0]].info.run_id
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "loss")]
        assert sorted(steps) == list(range(1, int(child.data.params["trainer.epochs"]) + 1))
        assert "error" not in child.data.tags
    for name in ("job 0", "job 1"):  # finished before: not trained again
        assert client.get_run(by_job[name].info.run_id).info.end_time == \
            by_job[name].info.end_time
    assert again.data.metrics["n_finished"] == 4

    done = run("cifar10-mlp", [*args, "sweep.resume=true"], tmp_path)  # nothing left to resume
    assert done.returncode == 1
    assert (f"(the latest, run {parent.info.run_id}, finished)") in done.stderr
    assert len(runs_of(uri, "tests")[2]) == 4  # no job ran


@pytest.mark.slow
def test_a_killed_job_process_costs_that_job_alone_and_sweep_resume_continues_it(
        tiny_cifar, tmp_path):
    # two jobs at a time; job 1 (10 epochs) is killed as the out-of-memory killer does
    args = ["-m", "hydra/launcher=processes", "hydra.launcher.n_jobs=2",
            *(o for o in sweep_overrides(tiny_cifar, tmp_path) if not o.startswith("trainer.")),
            "trainer.batch_size=16", "trainer.verbose=0", "trainer.early_stopping.patience=null",
            "trainer.threads=1", "optimizer.lr=0.01,0.001", "trainer.epochs=1,10"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    sweep = subprocess.Popen([str(CLI / "cifar10-mlp"), *args], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while True:  # until job 1 has logged 2 epochs
        assert sweep.poll() is None and time.monotonic() < deadline, "job 1 never got going"
        time.sleep(0.3)
        experiment = open_experiment(uri, "tests", create=False)
        victims = [c for c in client.search_runs([experiment]) if c.info.run_name.startswith(
            "job 1:")] if experiment else []
        if victims and len(client.get_metric_history(victims[0].info.run_id, "loss")) >= 2:
            break
    os.kill(int(victims[0].data.tags["pid"]), signal.SIGKILL)
    stdout, stderr = sweep.communicate(timeout=300)

    assert sweep.returncode == 1
    assert stderr.strip().splitlines()[-1] == (
        "cifar10-mlp: 1 of 4 sweep jobs lost their process (killed, e.g. out of memory, or "
        "stopped alone): their runs are KILLED with every finished epoch; run the same command "
        "with sweep.resume=true to continue them")
    assert "Traceback" not in stderr + stdout
    assert "job 1: optimizer.lr=0.01 trainer.epochs=10 was lost: its process (pid " \
        f"{victims[0].data.tags['pid']}) was killed by SIGKILL" in stdout + stderr
    _, (parent,), children = runs_of(uri, "tests")
    by_job = {c.info.run_name.split(":")[0]: c for c in children}
    assert parent.info.status == "KILLED" and len(children) == 4
    assert {n: (c.info.status, c.data.tags.get("error")) for n, c in by_job.items()} == {
        "job 0": ("FINISHED", None), "job 1": ("KILLED", "process lost"),
        "job 2": ("FINISHED", None), "job 3": ("FINISHED", None)}
    kept = len(client.get_metric_history(by_job["job 1"].info.run_id, "loss"))

    done = run("cifar10-mlp", [*args, "sweep.resume=true"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    _, (again,), children = runs_of(uri, "tests")
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"
    assert {c.info.run_name.split(":")[0]: c.info.run_id for c in children} == {
        n: c.info.run_id for n, c in by_job.items()}  # the same runs, continued
    resumed = client.get_run(by_job["job 1"].info.run_id)
    assert resumed.info.status == "FINISHED" and "test_accuracy" in resumed.data.metrics
    steps = [m.step for m in client.get_metric_history(resumed.info.run_id, "loss")]
    assert sorted(steps) == list(range(1, 11))  # each epoch logged once
    # it went on from its checkpoint (written before each epoch is logged: at least as far)
    job_logs = "".join(p.read_text() for p in (tmp_path / "multirun").glob("*/*/1/job.log"))
    (after,) = re.findall(r"continuing the interrupted run from its checkpoint after epoch (\d+)",
                          job_logs)
    assert kept <= int(after) < 10


@pytest.mark.slow
def test_sweep_resume_without_an_earlier_sweep_stops_before_any_job(tiny_cifar, tmp_path):
    done = run("cifar10-mlp", ["-m", *sweep_overrides(tiny_cifar, tmp_path), *GRID,
                               "sweep.resume=true"], tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "cifar10-mlp: error: sweep.resume=true: no interrupted sweep of these jobs in "
        f"experiment 'tests' of sqlite:///{tmp_path / 'mlflow.db'}")
    assert not list(tmp_path.glob("multirun/*/*/*/job.log"))  # no job began
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tests")
    assert experiment is None or not client.search_runs([experiment.experiment_id])
