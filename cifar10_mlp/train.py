"""Training: compile, fit with validation, early stopping on a validation metric."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import keras
import numpy as np

from cifar10_mlp import optim
from cifar10_mlp.data import DataSplit


class LearningRateSetter(keras.callbacks.Callback):
    """Sets the optimizer's learning rate before every step from a step -> lr function."""

    def __init__(self, schedule: Callable[[int], float], steps_per_epoch: int):
        super().__init__()
        self.schedule = schedule
        self.steps_per_epoch = steps_per_epoch
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        step = self.epoch * self.steps_per_epoch + batch
        self.model.optimizer.learning_rate.assign(self.schedule(step))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(self.model.optimizer.learning_rate.numpy())


class EpochTimer(keras.callbacks.Callback):
    """Adds ``epoch_seconds``, the wall time of each epoch (validation included), to the logs."""

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = time.perf_counter() - self.start


class StopOnDivergence(keras.callbacks.Callback):
    """Raises as soon as the training loss is NaN or infinite, naming the epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingDiverged(f"training loss became {float(loss)} in epoch "
                                   f"{self.epoch + 1}, batch {batch + 1}")


class TrainingDiverged(RuntimeError):
    """The loss stopped being finite; the run cannot recover."""


def limit_threads(threads: int) -> None:
    """Use ``threads`` cores for TensorFlow's op pools; a no-op once TensorFlow has started.

    A worker process that runs several sweep jobs gets the same count each time, so
    only the first call matters.
    """
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
    except RuntimeError:  # TensorFlow already initialised in this process
        pass


def fit(model: keras.Model, split: DataSplit, trainer_cfg, optimizer_cfg, schedule_cfg,
        seed: int, callbacks: Sequence[keras.callbacks.Callback] = ()
        ) -> keras.callbacks.History:
    """Train ``model`` on the split's training set, validating each epoch.

    The weights of the best epoch by ``trainer.early_stopping.monitor`` (a validation
    metric) are restored at the end, whether or not training stopped early.
    """
    keras.utils.set_random_seed(seed)  # shuffling order; weights and dropout carry own seeds
    n_classes = len(split.class_names)
    steps_per_epoch = math.ceil(len(split.y_train) / trainer_cfg.batch_size)
    schedule = optim.learning_rate_schedule(schedule_cfg, optimizer_cfg.lr, steps_per_epoch,
                                            trainer_cfg.epochs)
    model.compile(
        optimizer=optim.build(optimizer_cfg),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=trainer_cfg.label_smoothing),
        metrics=["accuracy"],
        jit_compile=trainer_cfg.jit_compile,
    )
    stopping = trainer_cfg.early_stopping
    best_epoch = keras.callbacks.EarlyStopping(
        monitor=stopping.monitor,
        mode=stopping.mode,
        # null patience: never stop, but still restore the best epoch's weights
        patience=trainer_cfg.epochs if stopping.patience is None else stopping.patience,
        restore_best_weights=True,
        verbose=1 if trainer_cfg.verbose else 0,
    )
    return model.fit(
        split.x_train,
        one_hot(split.y_train, n_classes),
        batch_size=trainer_cfg.batch_size,
        epochs=trainer_cfg.epochs,
        validation_data=(split.x_val, one_hot(split.y_val, n_classes)),
        shuffle=True,
        callbacks=[LearningRateSetter(schedule, steps_per_epoch), StopOnDivergence(), EpochTimer(),
                   best_epoch, *callbacks],
        verbose=trainer_cfg.verbose,
    )


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Integer labels to float32 one-hot rows (label smoothing needs dense targets)."""
    return np.eye(n_classes, dtype=np.float32)[labels]
