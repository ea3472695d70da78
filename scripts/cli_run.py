"""Run the `cifar10-mlp` command as a user would and read its run back from MLflow: what the
benchmark and the ablations time."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

CLI = str(Path(sys.executable).parent / "cifar10-mlp")


def cli_run(overrides: list[str], workdir: Path) -> dict:
    """Run `cifar10-mlp` and read its stage timings and metrics back from MLflow."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    start = time.perf_counter()
    done = subprocess.run([CLI, *overrides, f"tracking.uri={uri}",
                           "tracking.experiment=benchmark", "trainer.verbose=0"],
                          cwd=workdir, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"cifar10-mlp {' '.join(overrides)} failed:\n{done.stderr[-3000:]}")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("benchmark")
    run = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"],
                             max_results=1)[0]
    epochs = client.get_metric_history(run.info.run_id, "epoch_seconds")
    val = client.get_metric_history(run.info.run_id, "val_accuracy")
    return {"wall_seconds": wall, "metrics": dict(run.data.metrics),
            "split": (int(run.data.params["split.n_train"]), int(run.data.params["split.n_val"])),
            "epoch_seconds": [m.value for m in sorted(epochs, key=lambda m: m.step)],
            "val_accuracy": [m.value for m in sorted(val, key=lambda m: m.step)]}


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """``--data``: the CIFAR-10 archive or folder, by default ``$CIFAR10_PATH``, required
    when that is unset. Made absolute: the runs it is handed to work in folders of their own,
    where a relative path would name nothing."""
    default = os.environ.get("CIFAR10_PATH")
    parser.add_argument("--data", type=lambda path: str(Path(path).resolve()), default=default,
                        required=default is None,
                        help="CIFAR-10 archive or folder (default: $CIFAR10_PATH)")
