"""Fault injection: a stop at any moment of a run's or a sweep's life ends clean, and
resuming loses nothing.

Each scenario first runs uninterrupted (its duration spans the schedule, its metrics are
the reference), then goes through a seeded schedule of moments spread over that whole
life: start-up, data loading, tracing the first epoch, epochs, validation, test
evaluation, figures, model logging, the sweep's report. A session is started (fresh, or
resuming what the previous stop left), stopped at the next moment, and checked: it exits
within 10 s, non-zero, with one line and no traceback, and leaves no run RUNNING or
FAILED. Once a session outlives its moment (it had little left to do), that chain of
resumed sessions must have ended as the uninterrupted run did: each epoch logged once,
the same metrics; the moment is then tried again on a fresh chain.
"""

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_overrides
from mlflow import MlflowClient

CLI = str(Path(sys.executable).parent / "cifar10-mlp")
N_MOMENTS = int(os.environ.get("CIFAR10_MLP_STOP_MOMENTS", "20"))  # per scenario
EXIT_WITHIN_S = 10.0
COMPARED = ("loss", "val_accuracy")  # per epoch
FINAL = ("test_accuracy", "test_loss", "selected_val_accuracy")


def terminal_sigint():
    """In the child: take SIGINT as a terminal delivers it, even under a backgrounded pytest
    (whose shell made children ignore it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def schedule(n: int, span: float, seed: int) -> list[float]:
    """``n`` moments in (0, span), one drawn at random in each n-th of it, shuffled."""
    rng = np.random.default_rng(seed)
    moments = (np.arange(n) + rng.uniform(0.05, 0.95, n)) * span / n
    return [float(m) for m in rng.permutation(moments)]


@dataclass
class Scenario:
    """A command (a single run or a sweep), how it resumes, and how it is stopped."""

    args: list[str]
    resume: str  # the override that continues it
    sweep: bool
    signum: int
    to_group: bool  # as a terminal's Ctrl-C; else to the command's own process

    def start(self, cwd: Path, experiment: str, resume: bool) -> subprocess.Popen:
        args = [*self.args, f"tracking.experiment={experiment}",
                *([self.resume] if resume else [])]
        return subprocess.Popen([CLI, *args], cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True,
                                preexec_fn=terminal_sigint)

    def stop(self, process: subprocess.Popen) -> None:
        if self.to_group:
            os.killpg(process.pid, self.signum)
        else:
            process.send_signal(self.signum)


def outcome(client: MlflowClient, experiment: str) -> dict[str, dict]:
    """Each run of the experiment by name: status, per-epoch histories and final metrics."""
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    return {run.info.run_name: {
        "status": run.info.status,
        "error": run.data.tags.get("error"),
        "parent": run.data.tags.get("sweep") == "parent",
        **{key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
           for key in COMPARED},
        **{key: run.data.metrics.get(key) for key in FINAL}} for run in runs}


def assert_ended_as(reference: dict, ended: dict) -> None:
    """A chain of resumed sessions ended as the uninterrupted run: the same runs, FINISHED,
    each epoch logged once, the same metrics."""
    assert sorted(ended) == sorted(reference)
    for name, run in ended.items():
        assert run["status"] == "FINISHED", (name, run["status"], run["error"])
        if run["parent"]:
            continue
        for key in COMPARED:
            assert sorted(run[key]) == sorted(reference[name][key]), (name, key)
        for key in FINAL:
            assert run[key] == reference[name][key], (name, key)


def exercise(scenario: Scenario, tmp_path: Path, seed: int) -> dict[str, int]:
    """Run the scenario's schedule; return the counts for the closing note."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    started = time.monotonic()
    done = subprocess.run([CLI, *scenario.args, "tracking.experiment=reference"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    life = time.monotonic() - started
    reference = outcome(client, "reference")

    counts = {"moments": 0, "stopped": 0, "chains_completed": 0}
    chain, resume = 0, False
    for moment in schedule(N_MOMENTS, 0.85 * life, seed):
        counts["moments"] += 1
        while True:
            experiment = f"chain-{chain}"
            process = scenario.start(tmp_path, experiment, resume)
            try:
                process.wait(timeout=moment)
            except subprocess.TimeoutExpired:
                break  # still running at its moment: stop it
            assert process.returncode == 0, process.stderr.read()[-3000:]
            assert resume, f"a fresh session ended within {moment:.1f} s of a {life:.1f} s life"
            assert_ended_as(reference, outcome(client, experiment))
            counts["chains_completed"] += 1
            chain, resume = chain + 1, False  # the same moment, on a fresh chain

        scenario.stop(process)
        signalled = time.monotonic()
        _, stderr = process.communicate(timeout=60)
        waited = time.monotonic() - signalled
        where = f"stopped {moment:.2f} s into a session of chain {chain}:\n{stderr[-3000:]}"
        assert waited < EXIT_WITHIN_S, where
        assert process.returncode != 0, where
        assert "Traceback" not in stderr, where
        assert stderr.strip().splitlines()[-1].startswith("cifar10-mlp: "), where
        statuses = {name: run["status"] for name, run in outcome(client, experiment).items()}
        assert not {"RUNNING", "FAILED"} & set(statuses.values()), (statuses, where)
        counts["stopped"] += 1
        # a session stopped before its run (or sweep) opened left nothing to resume
        resume = any(s == "KILLED" for s in statuses.values())

    while True:  # the last chain, to its end
        process = scenario.start(tmp_path, f"chain-{chain}", resume)
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
        assert_ended_as(reference, outcome(client, f"chain-{chain}"))
        counts["chains_completed"] += 1
        print(f"\n{scenario}: {counts}")
        return counts


def single_run(tiny, tmp_path) -> list[str]:
    return [o for o in tiny_overrides(tiny, tmp_path) if not o.startswith("trainer.epochs")] + [
        "trainer.epochs=6", "trainer.early_stopping.patience=null", "trainer.threads=1"]


def joblib_grid(tiny, tmp_path) -> list[str]:
    return ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
            *single_run(tiny, tmp_path), "tracking.log_model=false",
            "model.hidden=[16],[32,16]", "optimizer.lr=0.01,0.001"]


@pytest.mark.slow
def test_a_single_run_stopped_at_any_moment_ends_clean_and_resumes_to_the_same_end(
        tiny_cifar, tmp_path):
    args = [*single_run(tiny_cifar, tmp_path), "tracking.run_name=the-run"]  # as the reference
    scenario = Scenario(args, "trainer.resume=true", sweep=False, signum=signal.SIGINT,
                        to_group=True)
    counts = exercise(scenario, tmp_path, seed=1)
    assert counts["stopped"] == counts["moments"] == N_MOMENTS


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_a_joblib_sweep_stopped_at_any_moment_ends_clean_and_resumes_to_the_same_end(
        signum, tiny_cifar, tmp_path):
    # Ctrl-C reaches every process of the group; SIGTERM only the sweep's own
    scenario = Scenario(joblib_grid(tiny_cifar, tmp_path), "sweep.resume=true", sweep=True,
                        signum=signum, to_group=signum == signal.SIGINT)
    counts = exercise(scenario, tmp_path, seed=100 + signum)
    assert counts["stopped"] == counts["moments"] == N_MOMENTS
