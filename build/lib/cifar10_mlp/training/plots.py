"""Figures of one run. Each function returns a matplotlib Figure and writes nothing.

Figures are built with ``matplotlib.figure.Figure`` rather than pyplot, so no
global figure registry or GUI backend is involved and nothing needs closing.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from cifar10_mlp.training.evaluate import Evaluation


def all_figures(evaluation: Evaluation, history: dict[str, list[float]], images: np.ndarray,
                n_mistakes: int) -> dict[str, Figure]:
    """The run's figures by file name: confusion matrix, mistakes grid, learning curves."""
    return {
        "confusion_matrix.png": confusion_matrix(evaluation),
        "misclassified.png": misclassified_grid(evaluation, images, n_mistakes),
        "learning_curves.png": learning_curves(history),
    }


def confusion_matrix(evaluation: Evaluation) -> Figure:
    """Heatmap of the row-normalised confusion matrix, each cell captioned with its count."""
    names = evaluation.class_names
    k = len(names)
    fig = Figure(figsize=(1.0 + 0.75 * k, 0.5 + 0.7 * k), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(evaluation.confusion_normalized, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    for (row, col), count in np.ndenumerate(evaluation.confusion):
        share = evaluation.confusion_normalized[row, col]
        ax.text(col, row, f"{count}\n{share:.0%}", ha="center", va="center", fontsize=7,
                color="white" if share > 0.5 else "black")
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Test confusion matrix (accuracy {evaluation.accuracy:.1%})")
    return fig


def misclassified_grid(evaluation: Evaluation, images: np.ndarray, n: int) -> Figure:
    """The ``n`` most confident mistakes, each captioned true / predicted / confidence."""
    y_pred = evaluation.y_pred
    confidence = evaluation.probabilities.max(axis=1)
    wrong = np.flatnonzero(y_pred != evaluation.y_true)
    worst = wrong[np.argsort(-confidence[wrong], kind="stable")][:n]
    cols = max(1, min(5, len(worst)))
    rows = max(1, int(np.ceil(len(worst) / cols)))
    fig = Figure(figsize=(2.0 * cols, 2.3 * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    names = evaluation.class_names
    for ax, i in zip(axes, worst, strict=False):
        ax.imshow(images[i], interpolation="nearest")
        ax.set_title(f"true: {names[evaluation.y_true[i]]}\npred: {names[y_pred[i]]} "
                     f"({confidence[i]:.0%})", fontsize=8)
    fig.suptitle(f"Most confident test mistakes ({len(wrong)} of {len(y_pred)} wrong)"
                 if len(worst) else "No test mistakes")
    return fig


def learning_curves(history: dict[str, list[float]]) -> Figure:
    """Loss and accuracy per epoch, training against validation."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "accuracy"), strict=True):
        for prefix, label in (("", "train"), ("val_", "validation")):
            values = history.get(prefix + metric)
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(metric.capitalize())
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    return fig


def hyperparameter_scatter(rows: list[dict[str, object]], params: list[str],
                           metric: str) -> Figure:
    """One panel per swept hyperparameter: its value against ``metric``, one dot per run,
    pruned runs (stopped early, so at a lower value) as grey crosses.

    Numeric values go on a linear (or, spanning a decade or more, log) axis; anything else,
    such as a list of layer widths, is placed as a category.
    """
    scored = [row for row in rows if isinstance(row.get(metric), float)]
    params = params or ["run"]
    fig = Figure(figsize=(4.0 * len(params), 3.6), layout="constrained")
    for ax, param in zip(np.atleast_1d(fig.subplots(1, len(params))), params, strict=True):
        values = [str(row[param]) for row in scored]
        numbers = as_floats(values)
        if numbers is not None:
            x = numbers
            positive = [v for v in numbers if v > 0]
            if len(positive) == len(numbers) and positive and max(positive) >= 10 * min(positive):
                ax.set_xscale("log")
        else:
            categories = sorted(set(values))
            x = [categories.index(v) for v in values]
            ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
        for pruned, style in ((False, {"label": "finished"}),
                              (True, {"label": "pruned", "marker": "x", "color": "grey"})):
            picked = [i for i, row in enumerate(scored) if (row["status"] == "PRUNED") == pruned]
            if picked:
                ax.scatter([x[i] for i in picked], [scored[i][metric] for i in picked], **style)
        ax.set_xlabel(param)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if len({row["status"] for row in scored}) > 1:
            ax.legend(fontsize=8)
    n_finished = sum(row["status"] == "FINISHED" for row in scored)
    fig.suptitle(f"{metric} by hyperparameter ({n_finished} finished, "
                 f"{len(scored) - n_finished} pruned runs)")
    return fig


def validation_curves(curves: dict[str, list[float]], best: str | None,
                      pruned: set[str]) -> Figure:
    """Validation accuracy per epoch of every run, overlaid: the best run drawn bold, pruned
    runs grey and dashed with a cross where they were cut, the others thin."""
    fig = Figure(figsize=(10, 5), layout="constrained")
    ax = fig.subplots()
    for name, values in curves.items():
        epochs = range(1, len(values) + 1)
        if name == best:
            ax.plot(epochs, values, color="tab:red", linewidth=2.5, zorder=3,
                    label=f"best: {name}")
        elif name in pruned:
            ax.plot(epochs, values, color="grey", linestyle="--", linewidth=1, alpha=0.7)
            ax.plot(len(values), values[-1], "x", color="grey")
        else:
            ax.plot(epochs, values, color="tab:blue", linewidth=1, alpha=0.6)
    ax.plot([], [], color="tab:blue", linewidth=1, label="finished")
    if pruned:
        ax.plot([], [], color="grey", linestyle="--", marker="x", label="pruned (cut at x)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"Validation accuracy of {len(curves)} runs")
    return fig


def pareto_front(rows: list[dict[str, object]], objectives: dict[str, str]) -> Figure:
    """The first two objectives of the finished runs against each other, the Pareto front
    (rows marked ``pareto``) highlighted, joined and labelled with run names."""
    x_metric, y_metric = list(objectives)[:2]
    runs = [row for row in rows if row["status"] == "FINISHED"
            and isinstance(row.get(x_metric), int | float)
            and isinstance(row.get(y_metric), int | float)]
    front = sorted((row for row in runs if row.get("pareto") == "yes"), key=lambda r: r[x_metric])
    fig = Figure(figsize=(6.5, 4.8), layout="constrained")
    ax = fig.subplots()
    ax.scatter([r[x_metric] for r in runs], [r[y_metric] for r in runs], color="lightgrey",
               edgecolor="grey", label="finished runs")
    ax.plot([r[x_metric] for r in front], [r[y_metric] for r in front], "o-", color="tab:red",
            label="Pareto front")
    for row in front:
        ax.annotate(str(row["run"]), (row[x_metric], row[y_metric]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(f"{x_metric} ({objectives[x_metric]})")
    ax.set_ylabel(f"{y_metric} ({objectives[y_metric]})")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"Pareto front: {len(front)} of {len(runs)} finished runs")
    return fig


def as_floats(values: list[str]) -> list[float] | None:
    """The values as numbers, or None when any is not one."""
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


# --- dataset exploration -------------------------------------------------------------------

CHANNELS = (("red", "tab:red"), ("green", "tab:green"), ("blue", "tab:blue"))


def class_counts(counts: dict[str, list[int]], class_names: tuple[str, ...]) -> Figure:
    """Images per class, one bar group per class, one bar per split."""
    fig = Figure(figsize=(1.0 + 0.9 * len(class_names), 4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(counts)
    for i, (split, values) in enumerate(counts.items()):
        bars = ax.bar(np.arange(len(class_names)) + i * width, values, width, label=split)
        ax.bar_label(bars, fontsize=6)
    ax.set_xticks(np.arange(len(class_names)) + 0.4 - width / 2, class_names, rotation=30,
                  ha="right")
    ax.set_ylabel("images")
    ax.set_title("Images per class and split")
    ax.legend()
    return fig


def sample_grid(images: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...],
                per_class: int) -> Figure:
    """The first ``per_class`` images of every class, one row per class."""
    fig = Figure(figsize=(1.1 * per_class + 1.2, 1.1 * len(class_names)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(class_names), per_class, squeeze=False))
    for c, row in enumerate(axes):
        picks = np.flatnonzero(labels == c)[:per_class]
        for ax, i in zip(row, [*picks, *[None] * (per_class - len(picks))], strict=True):
            ax.set_xticks([])
            ax.set_yticks([])
            if i is not None:
                ax.imshow(images[i], interpolation="nearest")
        row[0].set_ylabel(class_names[c], rotation=0, ha="right", va="center")
    fig.suptitle("Training images by class")
    return fig


def channel_histograms(before: np.ndarray, after: np.ndarray, preprocess_name: str) -> Figure:
    """Per-channel pixel histograms of raw training images and of the preprocessed ones."""
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    for ax, values, title in zip(fig.subplots(1, 2), (before, after),
                                 ("raw pixels (0-255)", f"after {preprocess_name}"),
                                 strict=True):
        channels = values.reshape(-1, 3)
        for c, (name, colour) in enumerate(CHANNELS):
            ax.hist(channels[:, c], bins=64, histtype="step", color=colour,
                    label=f"{name}: mean {channels[:, c].mean():.3g}, "
                          f"std {channels[:, c].std():.3g}")
        ax.set_title(title)
        ax.set_ylabel("values")
        ax.legend(fontsize=7)
    fig.suptitle("Pixel values of the training split")
    return fig


def class_mean_images(means: np.ndarray, class_names: tuple[str, ...]) -> Figure:
    """The mean training image of each class."""
    fig = Figure(figsize=(1.5 * len(class_names), 2.0), layout="constrained")
    for ax, image, name in zip(np.atleast_1d(fig.subplots(1, len(class_names))), means,
                               class_names, strict=True):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle("Mean training image per class")
    return fig


def projections(points: dict[str, np.ndarray], class_names: tuple[str, ...]) -> Figure:
    """PCA (and t-SNE, when computed) of training images, coloured by class."""
    panels = [("pca", "labels", "PCA")] + ([("tsne", "tsne_labels", "t-SNE")]
                                           if "tsne" in points else [])
    fig = Figure(figsize=(6 * len(panels) + 1.5, 5.5), layout="constrained")
    for ax, (key, labels_key, title) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels,
                                            strict=True):
        xy, labels = points[key], points[labels_key]
        for c, name in enumerate(class_names):
            ax.scatter(*xy[labels == c].T, s=4, alpha=0.6, label=name)
        ax.set_title(f"{title} of {len(labels)} training images")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.axes[-1].legend(markerscale=3, fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5))
    return fig
