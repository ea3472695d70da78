"""Fault injection (scripts/stop_drill.py): a stop at any moment of a run's or a parallel
sweep's life ends clean, and resuming ends as if it had never been stopped."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_overrides

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "stop_drill.py"
N_MOMENTS = int(os.environ.get("CIFAR10_MLP_STOP_MOMENTS", "20"))  # per scenario


def single_run(tiny, tmp_path) -> list[str]:
    return [o for o in tiny_overrides(tiny, tmp_path)
            if not o.startswith(("trainer.epochs", "tracking."))] + [
        "trainer.epochs=6", "trainer.early_stopping.patience=null", "trainer.threads=1"]


def grid(launcher, tiny, tmp_path) -> list[str]:
    return ["-m", f"hydra/launcher={launcher}", "hydra.launcher.n_jobs=2",
            *single_run(tiny, tmp_path), "tracking.log_model=false",
            "model.hidden=[16],[32,16]", "optimizer.lr=0.01,0.001"]


def drill(overrides, signal_name, seed, tmp_path) -> dict:
    done = subprocess.run([sys.executable, str(SCRIPT), "--workdir", str(tmp_path / "drill"),
                           "--moments", str(N_MOMENTS), "--seed", str(seed),
                           "--signal", signal_name,
                           # a hang guard, not a speed check: the machine is shared
                           "--exit-within", "60", "--", *overrides],
                          capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-5000:]
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\n{signal_name}: {counts}")
    assert counts["moments"] == N_MOMENTS
    assert counts["stopped"] + counts["finished_anyway"] == N_MOMENTS
    assert counts["stopped"] >= N_MOMENTS // 2  # the schedule lands inside the life
    return counts


@pytest.mark.slow
def test_a_single_run_stopped_at_any_moment_ends_clean_and_resumes_to_the_same_end(
        tiny_cifar, tmp_path):
    drill(single_run(tiny_cifar, tmp_path), "SIGINT", 1, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["processes", "joblib"])
@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_parallel_sweep_stopped_at_any_moment_ends_clean_and_resumes_to_the_same_end(
        launcher, signal_name, tiny_cifar, tmp_path):
    # SIGINT reaches every process of the group, as Ctrl-C; SIGTERM only the sweep's own
    counts = drill(grid(launcher, tiny_cifar, tmp_path), signal_name, 2, tmp_path)
    if launcher == "processes":  # its jobs ignore Ctrl-C until they can act on it
        assert counts["worker_start_up_tracebacks"] == 0
