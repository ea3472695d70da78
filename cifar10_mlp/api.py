"""The Python API, for notebooks: what ``cifar10-mlp`` does, called from a cell.

    from cifar10_mlp import api

    cfg = api.compose("model.hidden=[512]", "trainer.epochs=5")  # checked as the CLI checks
    trained = api.run("model.hidden=[512]", "trainer.epochs=5")  # logged to MLflow as the CLI
    trained.summary.metrics["test_accuracy"], trained.model, trained.figures["confusion_matrix.png"]
    swept = api.sweep("model.hidden=[256],[512]", "optimizer.lr=0.01,0.001")
    swept.table  # the sweep's comparison table, a pandas DataFrame

A run happens in the calling process and leaves nothing behind for the next one: Hydra is
initialised and cleared within each call, and each run seeds its own generators (only
TensorFlow's thread pools keep the size the first run gave them). A sweep runs as the CLI
does, in a process of its own (its launcher's jobs, its console, its report), and its table
is read back from MLflow.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cifar10_mlp import cli, runner, stopping
from cifar10_mlp.config import schema
from cifar10_mlp.errors import UserError
from cifar10_mlp.sweeps.launch import fill_launch_settings

__all__ = ["SweepResult", "UserError", "compose", "run", "sweep"]

if TYPE_CHECKING:
    import pandas as pd


def compose(*overrides: str) -> DictConfig:
    """The config ``cifar10-mlp <overrides>`` would run (``from_run=<run id>`` included),
    validated: a bad value raises :class:`UserError` naming the key, before any work."""
    return _composed(list(overrides))[0]


def _composed(overrides: list[str]) -> tuple[DictConfig, list[str]]:
    swept = [o.input_line for o in OverridesParser.create().parse_overrides(overrides)
             if o.is_sweep_override()]
    if swept:
        raise UserError(f"{' '.join(swept)}: a list of values makes a sweep: use api.sweep()")
    overrides = cli.with_origin(overrides)
    cfg = _checked(overrides)
    fill_launch_settings(cfg, OmegaConf.create(), sweeping=False)
    schema.validate(cfg)
    return cfg, overrides


def _checked(overrides: list[str]) -> DictConfig:
    """:func:`cli.composed`, Hydra's refusal as one line (as the CLI prints it)."""
    try:
        return cli.composed(overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise UserError(str(err).splitlines()[0]) from None


def run(*overrides: str) -> runner.TrainedRun:
    """Train, test and log the run ``cifar10-mlp <overrides>`` would; its summary (MLflow run,
    metrics), the trained Keras model and its figures (matplotlib, shown inline).

    Interrupting the kernel stops the run at its next safe point (its MLflow run KILLED, every
    finished epoch kept) and raises KeyboardInterrupt; a second interrupt meanwhile ends the
    kernel's process at once."""
    cfg, overrides = _composed(list(overrides))
    with stopping.on_signals() as stop:
        return runner.run(cfg, overrides, stop=stop)


@dataclass(frozen=True)
class SweepResult:
    """A finished sweep: its MLflow parent run, best job and comparison table."""

    parent_run_id: str
    best_run_id: str | None  # by validation accuracy, never a pruned run
    table: pd.DataFrame  # one row per job, as the report's runs.csv
    exit_status: int  # the command's: non-zero when a job failed or was lost


def sweep(*overrides: str) -> SweepResult:
    """Run ``cifar10-mlp -m <overrides>`` (a grid, or ``hparams_search=...``) in a process of
    its own, its console shown as it goes; its comparison table from MLflow. Interrupting the
    kernel stops the sweep as Ctrl-C does (``sweep.resume=true`` continues it)."""
    uri = _checked(list(overrides)).tracking.uri  # where the sweep logs, to read it back
    command = [sys.executable, "-m", "cifar10_mlp", "-m", *overrides]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1)
    parent_run_id = None
    try:
        for line in process.stdout:
            print(line, end="", flush=True)
            found = re.match(r"Sweep ([0-9a-f]{32}): ", line)
            parent_run_id = found[1] if found else parent_run_id
        status = process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        for line in process.stdout:
            print(line, end="", flush=True)
        process.wait()
        raise
    if parent_run_id is None:
        raise UserError(f"the sweep ended (exit status {status}) before its report; its "
                        "output above says why")
    from cifar10_mlp.sweeps import report_files

    outcome = report_files.outcome_of(uri, parent_run_id)
    import pandas as pd

    return SweepResult(parent_run_id, outcome.best.run_id if outcome.best else None,
                       pd.DataFrame(outcome.rows, columns=outcome.columns), status)
