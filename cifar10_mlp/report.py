"""Comparison of a sweep's child runs: a table (CSV, Markdown) and the best run."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from cifar10_mlp.sweep_store import ChildRun

SELECTION_METRIC = "selected_val_accuracy"  # validation only: the test set never picks a run
METRIC_COLUMNS = (SELECTION_METRIC, "test_accuracy", "test_f1_macro", "epochs_trained")
IGNORED_PARAMS = ("split.", "tracking.run_name")  # derived or bookkeeping, not chosen


@dataclass(frozen=True)
class SweepReport:
    swept: list[str]  # the params whose values differ between runs
    rows: list[dict[str, object]]  # one per run, best validation accuracy first
    best: ChildRun | None
    n_finished: int
    n_failed: int  # FAILED; KILLED runs (of an interrupted, resumed search) are listed only

    @property
    def columns(self) -> list[str]:
        return ["run", "status", *self.swept, *METRIC_COLUMNS, "seconds", "error"]


def build(children: list[ChildRun]) -> SweepReport:
    """Tabulate the runs of one sweep and pick the best by validation accuracy."""
    keys = sorted({k for run in children for k in run.params
                   if not k.startswith(IGNORED_PARAMS)})
    swept = [k for k in keys if len({run.params.get(k) for run in children}) > 1]
    finished = [run for run in children if run.status == "FINISHED"]
    ranked = sorted(children, key=lambda run: (run.status != "FINISHED",
                                               -run.metrics.get(SELECTION_METRIC, -math.inf)))
    rows = [{"run": run.name, "status": run.status,
             **{k: run.params.get(k, "") for k in swept},
             **{m: run.metrics.get(m, "") for m in METRIC_COLUMNS},
             "seconds": round(run.seconds) if run.seconds is not None else "",
             "error": run.error or ""}
            for run in ranked]
    best = ranked[0] if finished else None
    return SweepReport(swept, rows, best, len(finished),
                       sum(run.status == "FAILED" for run in children))


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
    return f"{report.n_finished} finished, {report.n_failed} failed{best}"
