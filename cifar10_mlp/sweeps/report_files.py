"""A sweep's report, from its runs in the store: ``runs.csv``, ``runs.md``, figures and the page
``index.html``, written to a folder and logged under the parent run's ``report/``.

Written at the end of every multirun (and of a stopped one), and again by
``cifar10-mlp-report``.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from cifar10_mlp import pages
from cifar10_mlp.sweeps import report, report_page, seeds, study_figures
from cifar10_mlp.tracking import sweep_runs
from cifar10_mlp.tracking.store import absolute_uri, ui_url, where_to_look
from cifar10_mlp.training import plots

log = logging.getLogger(__name__)

CAPTIONS = {
    "validation_curves.png": "How the runs trained: validation accuracy per epoch",
    "val_accuracy_by_hyperparameter.png": "Validation accuracy against each swept key",
    "parallel_coordinates.png": "Parallel coordinates: the swept keys of each finished run",
    "parameter_importance.png": "Which keys mattered: parameter importance (fANOVA)",
    "optimization_history.png": "The search: best value so far, trial by trial",
    "intermediate_values.png": "The search: validation accuracy per epoch, as the pruner saw it",
    "pareto_front.png": "The Pareto front of the objectives",
    "best_confusion_matrix.png": "The best run: test confusion matrix",
    "best_learning_curves.png": "The best run: learning curves",
}


@dataclass(frozen=True)
class Written:
    """A sweep's report as written: the table, the verdict, where the page is."""

    outcome: report.SweepReport
    verdict: str
    page: Path
    where: str  # how to see the parent run in the MLflow UI

    def text(self, parent_run_id: str) -> str:
        """What the terminal shows: summary, table, verdict, the page, the UI."""
        return (f"\nSweep {parent_run_id}: {report.summary_line(self.outcome)}\n"
                f"{report.to_markdown(self.outcome)}\n\n{self.verdict}\n\n"
                f"report: {self.page}\nsee it {self.where}\n")


def objectives_of(parent_tags: dict[str, str]) -> dict[str, str] | None:
    """A search's objectives (metric -> maximize | minimize), as its parent run records them."""
    return json.loads(parent_tags["sweep_objectives"]) if "sweep_objectives" in parent_tags \
        else None


def outcome_of(uri: str, parent_run_id: str) -> report.SweepReport:
    """The sweep's comparison table as its report has it, from the store."""
    tags = sweep_runs.parent_run(uri, parent_run_id).data.tags
    return report.build(sweep_runs.sweep_children(uri, parent_run_id), objectives_of(tags))


def write(uri: str, parent_run_id: str, out_dir: Path, lost_after_s: float,
          planned: list[list[str]] | None = None, end_as: str | None = None,
          stopped_by: str | None = None) -> Written:
    """Build the sweep's report, write it to ``out_dir`` and log it to the parent, which then
    ends ``end_as`` (FINISHED; KILLED when ``stopped_by`` a signal; None leaves its status).
    Jobs left RUNNING by a lost process end KILLED first."""
    sweep_runs.end_lost_children(uri, parent_run_id, lost_after_s)
    parent = sweep_runs.parent_run(uri, parent_run_id)
    tags = parent.data.tags
    children = sweep_runs.sweep_children(uri, parent_run_id)
    outcome = report.build(children, objectives_of(tags), planned)
    finished = [run for run in children if report.status(run) == "FINISHED"]
    groups = seeds.seed_groups(finished, outcome.swept)
    verdict = seeds.verdict(groups)

    out_dir.mkdir(parents=True, exist_ok=True)
    files = [report.write_csv(outcome, out_dir / "runs.csv")]
    (out_dir / "runs.md").write_text(report.to_markdown(outcome) + "\n")
    files.append(out_dir / "runs.md")
    encoded = {name: pages.png(figure)
               for name, figure in _figures(uri, tags, children, outcome).items()}
    for name, data in encoded.items():  # beside the page, each figure as a PNG of its own
        (out_dir / name).write_bytes(base64.b64decode(data))
        files.append(out_dir / name)
    best_images = _best_run_images(uri, outcome, out_dir)
    files += [path for path in best_images.values()]
    images = {**{CAPTIONS.get(name, name): data for name, data in encoded.items()},
              **{CAPTIONS[f"best_{name}"]: base64.b64encode(path.read_bytes()).decode()
                 for name, path in best_images.items()}}
    keys = tags.get("sweep_keys", "").split(",") if tags.get("sweep_keys") else outcome.swept
    facts = report_page.SweepFacts(
        title=parent.info.run_name, command=tags.get("sweep_command", ""),
        swept={k: parent.data.params.get(f"sweep.{k}", "") for k in keys},
        seconds=((parent.info.end_time or time.time() * 1000) - parent.info.start_time) / 1000,
        links=_ui_links(uri, parent.info.experiment_id, children),
        from_run=parent.data.params.get("sweep.from_run"))
    page = out_dir / "index.html"
    page.write_text(report_page.render(facts, outcome, groups, verdict, images))
    files.append(page)

    summary_tags = {"sweep_summary": report.summary_line(outcome), "sweep_verdict": verdict}
    if stopped_by:
        summary_tags["error"] = f"stopped by {stopped_by}"
    metrics = {"n_finished": outcome.n_finished, "n_pruned": outcome.n_pruned,
               "n_failed": outcome.n_failed, "n_killed": outcome.n_interrupted}
    if outcome.best is not None:
        summary_tags["best_run_id"] = outcome.best.run_id
        metrics |= {f"best_{k}": v for k, v in outcome.best.metrics.items()
                    if k in report.METRIC_COLUMNS}
    if groups and groups[0].n > 1:
        metrics["best_group_mean_val_accuracy"] = groups[0].mean
    sweep_runs.close_sweep(uri, parent_run_id, summary_tags, metrics, files, end_as)
    return Written(outcome, verdict, page, where_to_look(absolute_uri(uri),
                                                         parent.info.experiment_id, parent_run_id))


def _figures(uri: str, tags: dict[str, str], children, outcome) -> dict:
    """The page's figures by file name: curves, hyperparameters, parallel coordinates,
    importance, a search's history, the Pareto front."""
    pruned = {run.name for run in children if run.pruned_epoch is not None}
    shown = [run for run in children if report.status(run) in ("FINISHED", report.PRUNED)]
    figures = {
        "validation_curves.png": plots.validation_curves(
            sweep_runs.curves(uri, shown, "val_accuracy"),
            outcome.best.name if outcome.best else None, pruned),
        "val_accuracy_by_hyperparameter.png": plots.hyperparameter_scatter(
            outcome.rows, outcome.swept, report.SELECTION_METRIC)}
    finished = [run for run in children if report.status(run) == "FINISHED"]
    try:  # Optuna's plots: a figure it cannot draw for these runs leaves the page without it
        study = study_figures.runs_study(finished, [k for k in outcome.swept if k != "seed"],
                                         report.SELECTION_METRIC)
        if study is not None:
            figures["parallel_coordinates.png"] = study_figures.parallel_coordinates(study)
            importance = study_figures.importance(study)
            if importance is not None:
                figures["parameter_importance.png"] = importance
        search = _search_study(tags)
        if search is not None:
            figures |= study_figures.search_history(search)
    except Exception as err:  # noqa: BLE001 - the report must not fail for a figure
        log.warning("some of Optuna's figures were left out of the report: %s", err)
    if len(outcome.objectives) > 1:
        figures["pareto_front.png"] = plots.pareto_front(outcome.rows, outcome.objectives)
    return figures


def _search_study(tags: dict[str, str]):
    """An Optuna search's study (its parent's resume key is ``<journal>#<study name>``)."""
    key = tags.get(sweep_runs.RESUME_KEY_TAG, "")
    journal, _, name = key.rpartition("#")
    if key.startswith("grid:") or not journal or not Path(journal).is_file():
        return None
    import optuna

    from cifar10_mlp.sweeps.study import open_storage

    try:
        return optuna.load_study(study_name=name, storage=open_storage(journal, "/"))
    except KeyError:
        return None


def _best_run_images(uri: str, outcome, out_dir: Path) -> dict[str, Path]:
    """The best run's confusion matrix and learning curves, copied beside the report."""
    if outcome.best is None:
        return {}
    found = {}
    for name in ("confusion_matrix.png", "learning_curves.png"):
        path = sweep_runs.download_artifact(uri, outcome.best.run_id, f"plots/{name}", out_dir)
        if path is not None:
            found[name] = path.replace(out_dir / f"best_{name}")
    return found


def _ui_links(uri: str, experiment_id: str, children) -> dict[str, str]:
    """Each run's page in the MLflow UI, when the store is a tracking server."""
    if not uri.startswith(("http://", "https://")):
        return {}
    return {report.short_name(run.name): ui_url(uri, experiment_id, run.run_id)
            for run in children}
