#!/usr/bin/env python
"""Stop a run or a sweep at many moments of its life, resume it each time, and check that
it ends as if it had never been stopped.

    # a joblib grid on real data, stopped 5 times by Ctrl-C (to the whole process group)
    python scripts/stop_drill.py --moments 5 --workdir /tmp/drill -- -m \\
        hydra/launcher=joblib hydra.launcher.n_jobs=2 'model.hidden=[256],[512]' \\
        optimizer.lr=0.01,0.001 data.train_limit=20000 trainer.epochs=25
    # a single run, stopped by SIGTERM to its process
    python scripts/stop_drill.py --signal SIGTERM --workdir /tmp/drill -- trainer.epochs=6

The command first runs uninterrupted: its duration spans the schedule, its runs are the
reference. Then, for each moment of a seeded schedule spread over that whole life
(start-up, data loading, tracing the first epoch, epochs, validation, test evaluation,
figures, model logging, the sweep's report), a session is started (fresh, or resuming
what the last stop left: ``trainer.resume=true`` or ``sweep.resume=true``), stopped at the
moment, and checked: it exits within 10 s (``--exit-within``), non-zero, with one line
and no traceback, and leaves no run RUNNING or FAILED. When a session outlives its moment
or finishes anyway, its chain of resumed sessions must have ended as the reference did
(the same runs FINISHED, each epoch logged once, the same metrics); the next moment starts
a fresh chain. A moment that a fresh session outlives (it ran faster than the reference)
is counted as finished anyway.
Prints the counts as JSON; exits non-zero, naming the moment, at the first failed check.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow import MlflowClient

CLI = str(Path(sys.executable).parent / "cifar10-mlp")
# before the interpreter runs the command's first line, a Ctrl-C can only meet Python's own
# start-up (which prints its KeyboardInterrupt): the schedule starts after it
STARTED_S = 0.1
COMPARED = ("loss", "val_accuracy")  # per epoch
FINAL = ("test_accuracy", "test_loss", "selected_val_accuracy")


class DrillFailure(Exception):
    """A check failed: the message says which, and at what moment."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise DrillFailure(message)


def worker_start_up(traceback: str) -> bool:
    """Whether a traceback is a Ctrl-C that met a joblib (loky) worker process while it was
    still importing, before any code of ours runs there: the one traceback a stop can still
    print (the stop itself ends cleanly; the drill counts these apart)."""
    return "_run_module_as_main" in traceback and "cifar10_mlp" not in traceback


def schedule(n: int, span: float, seed: int) -> list[float]:
    """``n`` moments in (STARTED_S, span), one drawn at random in each n-th, shuffled."""
    rng = np.random.default_rng(seed)
    moments = STARTED_S + (np.arange(n) + rng.uniform(0.05, 0.95, n)) * (span - STARTED_S) / n
    return [float(m) for m in rng.permutation(moments)]


def terminal_sigint() -> None:
    """In the child: take SIGINT as a terminal delivers it, even when this script was
    started in the background (whose shell made children ignore it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Scenario:
    """The command's overrides, and how it is stopped."""

    overrides: list[str]
    workdir: Path
    signum: int
    to_group: bool  # as a terminal's Ctrl-C; else to the command's own process

    @property
    def sweep(self) -> bool:
        return "-m" in self.overrides or "--multirun" in self.overrides

    def start(self, experiment: str, resume: bool) -> subprocess.Popen:
        resumed = ["sweep.resume=true" if self.sweep else "trainer.resume=true"] if resume else []
        named = [] if self.sweep else ["tracking.run_name=the-run"]  # as the reference's
        return subprocess.Popen(
            [CLI, *self.overrides, *named, f"tracking.uri={self.uri}",
             f"tracking.experiment={experiment}", *resumed],
            cwd=self.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True, preexec_fn=terminal_sigint)

    def stop(self, process: subprocess.Popen) -> None:
        if self.to_group:
            os.killpg(process.pid, self.signum)
        else:
            process.send_signal(self.signum)

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.workdir / 'mlflow.db'}"


def outcome(client: MlflowClient, experiment: str) -> dict[str, dict]:
    """Each run of the experiment by name: status, per-epoch histories and final metrics."""
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    return {run.info.run_name: {
        "status": run.info.status,
        "error": run.data.tags.get("error"),
        "parent": run.data.tags.get("sweep") == "parent",
        **{key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
           for key in COMPARED},
        **{key: run.data.metrics.get(key) for key in FINAL}} for run in runs}


def check_ended_as(reference: dict, ended: dict, chain: int) -> None:
    """A chain of resumed sessions ended as the uninterrupted command: the same runs,
    FINISHED, each epoch logged once, the same metrics."""
    check(sorted(ended) == sorted(reference),
          f"chain {chain} ended with runs {sorted(ended)}, not {sorted(reference)}")
    for name, run in ended.items():
        check(run["status"] == "FINISHED",
              f"chain {chain}: {name} ended {run['status']} ({run['error']})")
        for key in () if run["parent"] else (*COMPARED, *FINAL):
            check(run[key] == reference[name][key],
                  f"chain {chain}: {name}'s {key} is {run[key]}, "
                  f"uninterrupted {reference[name][key]}")


def drill(scenario: Scenario, n_moments: int, seed: int, exit_within_s: float
          ) -> dict[str, float]:
    """Run the schedule; return the counts."""
    client = MlflowClient(scenario.uri)
    started = time.monotonic()
    process = scenario.start("reference", resume=False)
    _, stderr = process.communicate()
    check(process.returncode == 0, f"the uninterrupted command failed:\n{stderr[-3000:]}")
    life = time.monotonic() - started
    reference = outcome(client, "reference")
    counts = {"life_seconds": round(life, 1), "moments": 0, "stopped": 0,
              "finished_anyway": 0, "chains_completed": 0, "slowest_exit_seconds": 0.0,
              "worker_start_up_tracebacks": 0}
    chain, resume = 0, False

    def chain_ended() -> None:
        nonlocal chain, resume
        check_ended_as(reference, outcome(client, f"chain-{chain}"), chain)
        counts["chains_completed"] += 1
        chain, resume = chain + 1, False

    for moment in schedule(n_moments, 0.85 * life, seed):
        counts["moments"] += 1
        while True:
            process = scenario.start(f"chain-{chain}", resume)
            try:
                process.wait(timeout=moment)
            except subprocess.TimeoutExpired:
                break  # still running at its moment: stop it
            check(process.returncode == 0, f"chain {chain} failed:\n{process.stderr.read()}")
            fresh = not resume
            chain_ended()
            if fresh:  # faster than the reference (the machine is shared): past its end
                counts["finished_anyway"] += 1
                break
            # a resumed session had little left to do: the moment goes to a fresh chain
        if process.returncode is not None:
            continue

        scenario.stop(process)
        signalled = time.monotonic()
        _, stderr = process.communicate()
        waited = time.monotonic() - signalled
        counts["slowest_exit_seconds"] = round(max(counts["slowest_exit_seconds"], waited), 1)
        if process.returncode == 0:  # its work was done: the stop met its shutdown
            counts["finished_anyway"] += 1
            chain_ended()
            continue
        where = (f"stopped {moment:.2f} s into a session of chain {chain}, exit status "
                 f"{process.returncode}, after {waited:.1f} s:\n{stderr[-3000:]}")
        lines = stderr.strip().splitlines()
        tracebacks = stderr.split("Traceback (most recent call last):")[1:]
        if tracebacks and all(worker_start_up(tb) for tb in tracebacks):
            counts["worker_start_up_tracebacks"] += 1  # a known gap, counted, not hidden
            tracebacks = []
        check(waited < exit_within_s and not tracebacks and bool(lines)
              and lines[-1].startswith("cifar10-mlp: "), where)
        statuses = {name: run["status"] for name, run in outcome(client, f"chain-{chain}").items()}
        check(not {"RUNNING", "FAILED"} & set(statuses.values()), f"{statuses}; {where}")
        counts["stopped"] += 1
        # a session stopped before its run (or sweep) opened left nothing to resume
        resume = "KILLED" in statuses.values()

    process = scenario.start(f"chain-{chain}", resume)  # the last chain, to its end
    _, stderr = process.communicate()
    check(process.returncode == 0, f"chain {chain} failed:\n{stderr[-3000:]}")
    chain_ended()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True,
                        help="an empty folder for the store, checkpoints and outputs")
    parser.add_argument("--moments", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="seeds the schedule")
    parser.add_argument("--signal", choices=["SIGINT", "SIGTERM"], default="SIGINT",
                        help="SIGINT goes to the process group (a terminal's Ctrl-C), SIGTERM "
                             "to the command's own process (a scheduler's stop)")
    parser.add_argument("--exit-within", type=float, default=10.0, metavar="SECONDS",
                        help="the longest a stopped session may take to exit")
    parser.add_argument("overrides", nargs="*", help="the command's arguments (after --)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    signum = signal.Signals[args.signal]
    scenario = Scenario(args.overrides, args.workdir.resolve(), signum,
                        to_group=signum == signal.SIGINT)
    try:
        counts = drill(scenario, args.moments, args.seed, args.exit_within)
    except DrillFailure as failure:
        sys.exit(f"stop_drill: {failure}")
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
