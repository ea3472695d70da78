"""The sweep report's figures beyond the table: what Optuna's matplotlib plots draw well.

Parallel coordinates and parameter importance (fANOVA, seeded) work on any
sweep: the finished runs become trials of an in-memory study, each swept key a parameter.
An Optuna search adds its own optimisation history and intermediate values (the per-epoch
validation accuracy its pruner saw). Optuna's plots use pyplot; each figure is taken off
pyplot's registry once drawn, so nothing accumulates.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import optuna
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from cifar10_mlp.tracking.sweep_runs import ChildRun
from cifar10_mlp.training.plots import as_floats

VALUE_NAME = "validation accuracy"


def runs_study(runs: list[ChildRun], keys: list[str], metric: str) -> optuna.Study | None:
    """The runs as trials of an in-memory study over ``keys`` (numbers as ranges, anything
    else as choices), valued by ``metric``; None with fewer than two runs or no key."""
    runs = [r for r in runs if metric in r.metrics]
    if len(runs) < 2 or not keys:
        return None
    distributions = {}
    for key in keys:
        values = [r.params.get(key, "") for r in runs]
        numbers = as_floats(values)
        if numbers is not None and min(numbers) < max(numbers):
            spans_decade = min(numbers) > 0 and max(numbers) >= 10 * min(numbers)
            distributions[key] = optuna.distributions.FloatDistribution(
                min(numbers), max(numbers), log=spans_decade)
        else:
            distributions[key] = optuna.distributions.CategoricalDistribution(sorted(set(values)))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    study.add_trials([optuna.trial.create_trial(
        params={k: float(r.params[k]) if isinstance(d, optuna.distributions.FloatDistribution)
                else r.params.get(k, "") for k, d in distributions.items()},
        distributions=distributions, value=r.metrics[metric]) for r in runs])
    return study


def parallel_coordinates(study: optuna.Study) -> Figure:
    return _drawn(lambda: optuna.visualization.matplotlib.plot_parallel_coordinate(
        study, target_name=VALUE_NAME))


def importance(study: optuna.Study) -> Figure | None:
    """Parameter importance for validation accuracy (None when it cannot be computed, e.g.
    every run scored the same)."""
    try:
        # fANOVA, not Optuna 4's default PED-ANOVA: that compares the best 10% of the trials
        # with the rest, one run of a dozen-run sweep, and credited a 2 x 2 grid's
        # learning rate with nearly all of it where the width decided the accuracy
        return _drawn(lambda: optuna.visualization.matplotlib.plot_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
            target_name=VALUE_NAME))
    except (RuntimeError, ValueError, ZeroDivisionError):
        return None


def search_history(study: optuna.Study) -> dict[str, Figure]:
    """An Optuna search's optimisation history and, when trials reported them, the
    intermediate values (single-objective studies)."""
    if len(study.directions) > 1:
        return {}
    figures = {"optimization_history.png": _drawn(
        lambda: optuna.visualization.matplotlib.plot_optimization_history(
            study, target_name=VALUE_NAME))}
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        figures["intermediate_values.png"] = _drawn(
            lambda: optuna.visualization.matplotlib.plot_intermediate_values(study))
    return figures


def _drawn(plot: Callable) -> Figure:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        axes = plot()
    figure = axes.figure if not hasattr(axes, "__len__") else axes.flat[0].figure
    figure.set_size_inches(10, 5)
    figure.tight_layout()
    plt.close(figure)  # off pyplot's registry; the Figure itself stays usable
    return figure
