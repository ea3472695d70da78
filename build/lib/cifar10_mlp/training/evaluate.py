"""Evaluation: predictions on a held-out set to metrics and confusion matrices."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix

from cifar10_mlp.config.schema import TTA_MODES

AVERAGES = ("macro avg", "weighted avg")


@dataclass(frozen=True)
class Evaluation:
    """Everything measured on one labelled set, plus what the figures need."""

    class_names: tuple[str, ...]
    y_true: np.ndarray
    probabilities: np.ndarray  # (N, n_classes)
    loss: float  # mean cross-entropy, without label smoothing
    accuracy: float
    report: dict  # scikit-learn's classification report: per class, macro and weighted
    confusion: np.ndarray  # counts, rows are true classes
    confusion_normalized: np.ndarray  # each row sums to 1 (0 for an absent class)

    @property
    def y_pred(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    def metrics(self, prefix: str = "test_") -> dict[str, float]:
        """Flat metric names for tracking: loss, accuracy, per-class and averaged P/R/F1."""
        out = {f"{prefix}loss": self.loss, f"{prefix}accuracy": self.accuracy}
        for key in (*self.class_names, *AVERAGES):
            row = self.report[key]
            tag = key.replace(" avg", "")
            for stat in ("precision", "recall", "f1-score"):
                out[f"{prefix}{stat.replace('-score', '')}_{tag}"] = float(row[stat])
        return out


def measure(model, x: np.ndarray, y: np.ndarray, class_names: tuple[str, ...],
            batch_size: int, tta: str = "none", shift: int = 0) -> Evaluation:
    """Predict ``x`` with ``model`` (through the test-time augmentation ``tta``; see
    :func:`views`) and measure against ``y``."""
    probabilities = predict(model, x, batch_size, tta, shift)
    return from_probabilities(y, probabilities, class_names)


def predict(model, x: np.ndarray, batch_size: int, tta: str = "none", shift: int = 0
            ) -> np.ndarray:
    """Class probabilities (N, n_classes) of uint8 images (N, 32, 32, 3): the model's,
    averaged over the views of each image that ``tta`` names."""
    each = [model.predict(view, batch_size=batch_size, verbose=0)
            for view in views(x, tta, shift)]
    return sum(each[1:], each[0]) / len(each)


def views(images: np.ndarray, tta: str, shift: int = 0) -> Iterator[np.ndarray]:
    """Each view of ``images`` (N, height, width, channels) that ``tta`` averages over, the
    images themselves first.

    ``none``: the images; ``flip``: also their left-right mirrors; ``flip_shift``: each of
    those also moved ``shift`` pixels up, down, left and right, with the borders reflected
    as in the training crops (``augment.crop_padding``): the shifts a crop-trained MLP has
    seen, whose predictions then vote as an ensemble.
    """
    if tta not in TTA_MODES:
        raise ValueError(f"tta={tta!r}: expected one of {', '.join(TTA_MODES)}")
    height, width = images.shape[1:3]
    if tta != "flip_shift":
        shift = 0  # only flip_shift moves the images
    elif not 0 < shift < min(height, width):
        raise ValueError(f"tta=flip_shift needs a shift of 1 to {min(height, width) - 1} "
                         f"pixels, got {shift}")
    padded = (np.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="reflect")
              if shift else images)
    # (rows, columns) each view's window starts at: content moves up, down, left, right
    starts = [(shift, shift)] + ([(2 * shift, shift), (0, shift), (shift, 2 * shift),
                                  (shift, 0)] if shift else [])
    moved = [padded[:, top:top + height, left:left + width] for top, left in starts]
    yield from (np.ascontiguousarray(view) for view in moved)
    if tta != "none":
        yield from (np.ascontiguousarray(view[:, :, ::-1]) for view in moved)


def from_probabilities(y_true: np.ndarray, probabilities: np.ndarray,
                       class_names: tuple[str, ...]) -> Evaluation:
    """Metrics of class probabilities against integer labels."""
    labels = np.arange(len(class_names))
    y_pred = probabilities.argmax(axis=1)
    picked = probabilities[np.arange(len(y_true)), y_true]
    loss = float(-np.mean(np.log(np.clip(picked, 1e-12, 1.0))))
    report = classification_report(y_true, y_pred, labels=labels, target_names=list(class_names),
                                   output_dict=True, zero_division=0)
    counts = confusion_matrix(y_true, y_pred, labels=labels)
    row_sums = counts.sum(axis=1, keepdims=True)
    normalized = np.divide(counts, row_sums, out=np.zeros(counts.shape), where=row_sums > 0)
    return Evaluation(tuple(class_names), np.asarray(y_true), probabilities, loss,
                      float(np.mean(y_pred == y_true)), report, counts, normalized)
