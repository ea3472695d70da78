"""The sweep console: start and end lines per job, the progress line, each job's log file."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from test_sweep import GRID, runs_of, sweep_overrides

from cifar10_mlp.sweeps.console import SweepProgress, clock
from cifar10_mlp.sweeps.launch import job_output_to
from cifar10_mlp.tracking.sweep_runs import ChildRun

CLI = Path(sys.executable).parent / "cifar10-mlp"


def child(run_id, status, val=None, pruned=None, error=None, seconds=None):
    metrics = {} if val is None else {"selected_val_accuracy": val, "test_accuracy": val - 0.01}
    return ChildRun(run_id, f"job {run_id}: model.hidden=[{run_id}]", status, {}, metrics,
                    seconds, error, pruned, job_log=f"/sweep/{run_id}/job.log")


def test_each_job_gets_one_start_and_one_end_line_however_it_ends():
    progress = SweepProgress(n_jobs=4, started_at=0.0)
    assert progress.look([]) == []
    assert progress.look([child("0", "RUNNING"), child("1", "RUNNING")]) == [
        ("[1/4] job 0: model.hidden=[0]: started", False),
        ("[2/4] job 1: model.hidden=[1]: started", False)]
    assert progress.look([child("0", "RUNNING"), child("1", "RUNNING")]) == []
    lines = progress.look([child("0", "FINISHED", 0.5, seconds=65), child("1", "RUNNING"),
                           child("2", "FAILED", error="ConfigError: bad")])
    assert lines == [
        ("[1/4] job 0: model.hidden=[0]: finished in 1:05: validation accuracy 0.5000, test "
         "accuracy 0.4900; log /sweep/0/job.log", True),
        # it started and failed between two looks: both lines, in order
        ("[3/4] job 2: model.hidden=[2]: started", False),
        ("[3/4] job 2: model.hidden=[2]: failed: ConfigError: bad; log /sweep/2/job.log", True)]
    lines = progress.look([child("0", "FINISHED", 0.5), child("1", "FINISHED", 0.3, pruned=2),
                           child("2", "FAILED"), child("3", "KILLED", error="process lost")])
    assert [line for line, _ in lines] == [
        "[2/4] job 1: model.hidden=[1]: pruned after epoch 2, validation accuracy 0.3000; "
        "log /sweep/1/job.log",
        "[4/4] job 3: model.hidden=[3]: started",
        "[4/4] job 3: model.hidden=[3]: stopped (KILLED): process lost; log /sweep/3/job.log"]
    # the best is never a pruned run, as in the report
    assert progress.counts() == ("3 of 4 jobs done: 1 finished, 1 pruned, 1 failed; best "
                                 "validation accuracy 0.5000 (job 0)")


def test_a_resumed_sweep_counts_the_jobs_that_ended_before_without_printing_them():
    progress = SweepProgress(n_jobs=3, started_at=100.0)
    earlier = [child("0", "FINISHED", 0.4), child("1", "KILLED")]
    assert progress.look(earlier) == []
    assert progress.counts().startswith("1 of 3 jobs done: 1 finished")
    assert progress.timing(130.0) == "0:30 elapsed, time left unknown"
    # the interrupted job goes on in its own run: it starts again, here
    lines = progress.look([child("0", "FINISHED", 0.4), child("1", "FINISHED", 0.6)])
    assert [line for line, _ in lines] == [
        "[1/3] job 1: model.hidden=[1]: started",
        "[1/3] job 1: model.hidden=[1]: finished: validation accuracy 0.6000, test accuracy "
        "0.5900; log /sweep/1/job.log"]
    # one job ended in this session in 60 s: one left, at that pace
    assert progress.timing(160.0) == "1:00 elapsed, about 1:00 left"
    assert progress.counts().endswith("best validation accuracy 0.6000 (job 1)")


def test_clock_shows_hours_only_when_there_are_some():
    assert (clock(5), clock(65), clock(3600 + 125.4)) == ("0:05", "1:05", "1:02:05")


def test_a_jobs_output_goes_to_its_log_file_python_and_c_level_alike(tmp_path, capfd):
    log_file = tmp_path / "job" / "job.log"
    print("before", flush=True)
    with job_output_to(log_file):
        print("from python")
        sys.stderr.write("a warning\n")
        os.write(1, b"from C, fd 1\n")
        os.write(2, b"from C, fd 2\n")
    print("after", flush=True)
    assert log_file.read_text().splitlines() == [
        "from python", "a warning", "from C, fd 1", "from C, fd 2"]
    out, err = capfd.readouterr()
    assert out.splitlines() == ["before", "after"] and err == ""


@pytest.mark.slow
def test_a_parallel_sweeps_console_shows_each_job_once_and_its_log_holds_the_epochs(
        tiny_cifar, tmp_path):
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
            *sweep_overrides(tiny_cifar, tmp_path), "trainer.verbose=2", "sweep.poll_seconds=0.5",
            *GRID]
    done = subprocess.run([str(CLI), *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)  # not a terminal: plain lines
    assert done.returncode == 0, done.stderr[-3000:]
    console = done.stdout + done.stderr
    assert "\x1b" not in console and "\r" not in console  # no control characters
    lines = done.stdout.splitlines()
    started = [line for line in lines if line.endswith(": started")]
    ended = [line for line in lines if re.match(r"\[\d/4\] job \d: .*: finished in ", line)]
    assert len(started) == 4 and len(ended) == 4
    assert sorted(line.split(": ")[0] for line in started) == \
        sorted(line.split(": ")[0] for line in ended)
    assert sum(line.startswith("Sweep ") for line in lines) == 1  # the summary, once
    # the jobs' own output: epochs, and each run's summary
    assert "val_accuracy: " not in console
    assert not any(line.startswith("MLflow run ") for line in console.splitlines())
    _, _, children = runs_of(f"sqlite:///{tmp_path / 'mlflow.db'}", "tests")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for run in children:
        log_file = Path(run.data.tags["job_log"])
        assert log_file.name == "job.log" and log_file.parent.name in run.info.run_name
        text = log_file.read_text()  # Keras' epoch line, and the run's summary
        assert "- val_accuracy: " in text and f"MLflow run {run.info.run_id}" in text
        assert any(line.endswith(f"log {log_file.relative_to(tmp_path)}") for line in ended)
        assert "job.log" in {a.path for a in client.list_artifacts(run.info.run_id)}
    # the last progress line agrees with the runs in MLflow
    last = [line for line in lines if line.startswith("progress: ")][-1]
    counted = re.match(r"progress: 4 of 4 jobs done: (\d) finished, 0 pruned, 0 failed; best "
                       r"validation accuracy ([\d.]+) \((job \d)\)", last)
    assert counted, last
    assert int(counted[1]) == sum(run.info.status == "FINISHED" for run in children) == 4
    best = max(run.data.metrics["selected_val_accuracy"] for run in children)
    assert float(counted[2]) == pytest.approx(best, abs=5e-5)
    (holder,) = [run for run in children if run.info.run_name.startswith(counted[3] + ":")]
    assert holder.data.metrics["selected_val_accuracy"] == pytest.approx(best)
