"""Comparison of a sweep's child runs: a table (CSV, Markdown), the best run, the Pareto front."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from cifar10_mlp.tracking.provenance import overrides_tag
from cifar10_mlp.tracking.sweep_runs import ChildRun

SELECTION_METRIC = "selected_val_accuracy"  # validation only: the test set never picks a run
METRIC_COLUMNS = (SELECTION_METRIC, "test_accuracy", "test_f1_macro", "epochs_trained")
# derived or bookkeeping, not chosen
IGNORED_PARAMS = ("split.", "tracking.run_name", "sweep.resume", "trainer.resume")
PRUNED = "PRUNED"  # shown as the status of a FINISHED run that a pruner stopped
NOT_STARTED = "NOT STARTED"  # a planned job of a stopped sweep that never ran


@dataclass(frozen=True)
class SweepReport:
    swept: list[str]  # the params whose values differ between runs
    objectives: dict[str, str]  # metric -> maximize | minimize
    rows: list[dict[str, object]]  # one per run: finished by validation accuracy, then the rest
    best: ChildRun | None  # by validation accuracy, among runs that were not pruned
    pareto: list[ChildRun]  # with several objectives: the finished runs no other run beats
    n_finished: int  # FINISHED and not pruned
    n_pruned: int
    n_failed: int  # FAILED; KILLED runs (of an interrupted sweep) are listed only
    n_interrupted: int = 0  # KILLED
    n_not_started: int = 0  # planned jobs (of a grid) without a run

    @property
    def columns(self) -> list[str]:
        extra = [m for m in self.objectives if m not in METRIC_COLUMNS]
        front = ["pareto"] if len(self.objectives) > 1 else []
        return ["run", "status", *self.swept, *METRIC_COLUMNS, *extra, *front, "seconds",
                "error"]


def short_name(name: str) -> str:
    """``job 3`` of ``job 3: model.hidden=[128] optimizer.lr=0.001`` (the table shows the
    values in their own columns)."""
    return name.split(": ")[0]


def status(run: ChildRun) -> str:
    """The run's MLflow status, or PRUNED for a run a pruner stopped."""
    return PRUNED if run.pruned_epoch is not None else run.status


def build(children: list[ChildRun], objectives: dict[str, str] | None = None,
          planned: list[list[str]] | None = None) -> SweepReport:
    """Tabulate the runs of one sweep, pick the best by validation accuracy (never a pruned
    run) and, for several objectives, mark the Pareto front. ``planned``: a grid's jobs
    (their overrides), so the ones without a run are listed as not started."""
    objectives = dict(objectives or {SELECTION_METRIC: "maximize"})
    keys = sorted({k for run in children for k in run.params
                   if not k.startswith(IGNORED_PARAMS)})
    swept = [k for k in keys if len({run.params.get(k) for run in children}) > 1]
    order = {"FINISHED": 0, PRUNED: 1}
    ranked = sorted(children, key=lambda run: (order.get(status(run), 2),
                                               -run.metrics.get(SELECTION_METRIC, -math.inf)))
    finished = [run for run in ranked if status(run) == "FINISHED"]
    front = pareto_front(finished, objectives) if len(objectives) > 1 else []
    on_front = {run.run_id for run in front}
    columns = [*METRIC_COLUMNS, *(m for m in objectives if m not in METRIC_COLUMNS)]
    rows = [{"run": short_name(run.name), "status": status(run),
             **{k: run.params.get(k, "") for k in swept},
             **{m: run.metrics.get(m, "") for m in columns},
             **({"pareto": "yes" if run.run_id in on_front else ""} if len(objectives) > 1
                else {}),
             "seconds": round(run.seconds) if run.seconds is not None else "",
             "error": run.error or ""}
            for run in ranked]
    started = {run.overrides for run in children}
    waiting = [(number, dict(o.split("=", 1) for o in job))
               for number, job in enumerate(planned or []) if overrides_tag(job) not in started]
    report = SweepReport(swept, objectives, rows, finished[0] if finished else None, front,
                         len(finished), sum(status(run) == PRUNED for run in children),
                         sum(run.status == "FAILED" for run in children),
                         sum(run.status == "KILLED" for run in children), len(waiting))
    # every column, also when no job had started (a sweep stopped that early)
    rows += [{**dict.fromkeys(report.columns, ""), "run": f"job {number}",
              "status": NOT_STARTED, **{k: values[k] for k in swept if k in values}}
             for number, values in waiting]
    return report


def pareto_front(runs: list[ChildRun], objectives: dict[str, str]) -> list[ChildRun]:
    """The runs that no other run matches or beats on every objective and beats on one."""
    def signed(run: ChildRun) -> tuple[float, ...]:  # larger is better on every axis
        return tuple(run.metrics[m] if way == "maximize" else -run.metrics[m]
                     for m, way in objectives.items())

    scored = [(run, signed(run)) for run in runs if all(m in run.metrics for m in objectives)]
    return [run for run, mine in scored
            if not any(all(o >= m for o, m in zip(other, mine, strict=True)) and other != mine
                       for _, other in scored)]


def write_csv(report: SweepReport, path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=report.columns)
        writer.writeheader()
        writer.writerows(report.rows)
    return path


def to_markdown(report: SweepReport) -> str:
    """The table as Markdown, also what the terminal shows."""
    def cell(value: object) -> str:
        if isinstance(value, float):
            return str(int(value)) if value.is_integer() else f"{value:.4f}"
        return str(value)

    lines = ["| " + " | ".join(report.columns) + " |",
             "|" + "|".join(" --- " for _ in report.columns) + "|"]
    lines += ["| " + " | ".join(cell(row[c]) for c in report.columns) + " |"
              for row in report.rows]
    return "\n".join(lines)


def summary_line(report: SweepReport) -> str:
    best = (f"; best {report.best.name} ({report.best.run_id}) with validation accuracy "
            f"{report.best.metrics.get(SELECTION_METRIC, float('nan')):.4f}"
            if report.best else "")
    front = (f"; Pareto front of {' and '.join(report.objectives)}: "
             f"{', '.join(run.name for run in report.pareto)}" if report.pareto else "")
    unfinished = "".join(f", {n} {what}" for n, what in (
        (report.n_interrupted, "interrupted"), (report.n_not_started, "not started")) if n)
    return (f"{report.n_finished} finished, {report.n_pruned} pruned, {report.n_failed} failed"
            f"{unfinished}{best}{front}")
