"""Training: compile, fit with validation, early stopping on a validation metric."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np

from cifar10_mlp import stopping
from cifar10_mlp.data import batches, preprocess
from cifar10_mlp.data.archive import DataSplit
from cifar10_mlp.errors import UserError
from cifar10_mlp.training import checkpoint, optim

PREFETCHED_BATCHES = 2  # enough to hide a batch's augmentation behind a step


class LearningRateLogger(keras.callbacks.Callback):
    """Adds ``lr``, the learning rate of each epoch's last step, to the epoch's logs."""

    def __init__(self, schedule: optim.WarmupSchedule):
        super().__init__()
        self.schedule = schedule

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(self.schedule(self.model.optimizer.iterations - 1))


class EpochTimer(keras.callbacks.Callback):
    """Adds ``epoch_seconds``, the wall time of each epoch (validation included), to the logs."""

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = time.perf_counter() - self.start


class StopOnDivergence(keras.callbacks.Callback):
    """Raises when an epoch's training loss is NaN or infinite, naming the epoch.

    Checked once an epoch, on the epoch's mean loss (one NaN batch makes it NaN): a check
    per batch would wait for every step to finish before Keras could start the next.
    """

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingDiverged(f"training loss became {float(loss)} in epoch {epoch + 1}")


class TrialReporter(keras.callbacks.Callback):
    """Hands each epoch's validation accuracy to a search trial's ``report`` and stops
    training when it answers True (the trial is pruned); ``pruned_epoch`` is then the last
    epoch trained (from 1)."""

    def __init__(self, report: Callable[[int, float], bool]):
        super().__init__()
        self.report = report
        self.pruned_epoch: int | None = None

    def on_epoch_end(self, epoch, logs=None):
        if self.report(epoch + 1, float(logs["val_accuracy"])):
            self.pruned_epoch = epoch + 1
            self.model.stop_training = True


class StopAtBatch(keras.callbacks.Callback):
    """Acts on a stop request (Ctrl-C, SIGTERM) before each training or validation batch:
    the batch before has finished and no TensorFlow function is being traced or run, so
    the run can end cleanly from there."""

    def __init__(self, request: stopping.StopRequest):
        super().__init__()
        self.request = request

    def on_train_batch_begin(self, batch, logs=None):
        self.request.check()

    def on_test_batch_begin(self, batch, logs=None):
        self.request.check()


class TrainingDiverged(UserError, RuntimeError):
    """The loss stopped being finite; the run cannot recover."""


def fit(model: keras.Model, split: DataSplit, trainer_cfg, optimizer_cfg, schedule_cfg,
        augment_cfg, seed: int, checkpoint_dir: Path,
        callbacks: Sequence[keras.callbacks.Callback] = (),
        log_epoch: Callable[[int, dict[str, float]], None] | None = None
        ) -> dict[str, list[float]]:
    """Train ``model`` on the split's training set, validating each epoch; return the
    per-epoch logs of the whole run. The batches, with the augmentations the model's own
    layers cannot do, come from :class:`batches.TrainingBatches`.

    A ZCA model whitens each image once, before training (:func:`split_at_whitening`).
    The weights of the best epoch by ``trainer.early_stopping.monitor`` (a validation
    metric) are restored at the end, whether or not training stopped early. A checkpoint
    in ``checkpoint_dir`` from an interrupted run is picked up: training goes on after
    its last completed epoch with its weights, optimizer and early-stopping state.
    ``log_epoch`` gets each epoch's number (from 1) and metrics once its checkpoint is
    saved (:class:`checkpoint.Checkpointer`), so a resumed run never logs an epoch twice.
    """
    keras.utils.set_random_seed(seed)  # shuffling order; weights and dropout carry own seeds
    n_classes = len(split.class_names)
    steps_per_epoch = math.ceil(len(split.y_train) / trainer_cfg.batch_size)
    schedule = optim.learning_rate_schedule(schedule_cfg, optimizer_cfg.lr, steps_per_epoch,
                                            trainer_cfg.epochs)
    whiten, trained = split_at_whitening(model)
    x_train, x_val = ((split.x_train, split.x_val) if whiten is None else
                      (whiten.predict(x, batch_size=trainer_cfg.batch_size, verbose=0)
                       for x in (split.x_train, split.x_val)))
    trained.compile(
        optimizer=optim.build(optimizer_cfg, schedule),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=trainer_cfg.label_smoothing),
        metrics=["accuracy"],
        jit_compile=trainer_cfg.jit_compile,
    )
    stopping = trainer_cfg.early_stopping
    state = checkpoint.read_checkpoint(checkpoint_dir)
    history = state["history"] if state else []
    best_weights = None
    if state:
        trained.optimizer.build(trained.trainable_variables)  # so its saved state has a home
        best_weights = checkpoint.restore(trained, checkpoint_dir)
    best_epoch = BestEpoch(
        carried=state["early_stopping"] if state else None,
        carried_weights=best_weights,
        monitor=stopping.monitor,
        mode=stopping.mode,
        # null patience: never stop, but still restore the best epoch's weights
        patience=trainer_cfg.epochs if stopping.patience is None else stopping.patience,
        restore_best_weights=True,
        verbose=1 if trainer_cfg.verbose else 0,
    )
    targets = one_hot(split.y_train, n_classes)
    training = batches.TrainingBatches(x_train, targets, trainer_cfg.batch_size, augment_cfg,
                                       seed)
    # a run stopped after its early-stopping epoch (testing it, say) trains no further
    stopped_early = bool(state) and stopping.patience is not None and \
        state["early_stopping"]["wait"] >= stopping.patience
    epochs = len(history) if stopped_early else trainer_cfg.epochs
    checkpointer = checkpoint.Checkpointer(checkpoint_dir, best_epoch, history, log_epoch)
    try:
        trained.fit(
            training_stream(training, len(history), epochs),
            steps_per_epoch=len(training),
            shuffle=False,  # the stream is in its own order (True would only warn)
            epochs=epochs,
            initial_epoch=len(history),
            # in the run's batch size: Keras' default (32) is many times slower
            validation_data=validation_stream(x_val, one_hot(split.y_val, n_classes),
                                              trainer_cfg.batch_size),
            callbacks=[LearningRateLogger(schedule), StopOnDivergence(), EpochTimer(), best_epoch,
                       checkpointer, *callbacks],
            verbose=trainer_cfg.verbose,
        )
    finally:  # an interrupted run's last checkpoint is on disk when fit() is left
        checkpointer.wait()
    return {key: [epoch[key] for epoch in history] for key in history[0]} if history else {}


def training_stream(training: batches.TrainingBatches, first_epoch: int, epochs: int):
    """The batches of epochs ``first_epoch`` to ``epochs - 1`` as one ``tf.data`` stream,
    the next batches prepared while a step trains (one stream for all of fit(): Keras
    makes a dataset of one epoch a new iterator every epoch)."""
    import tensorflow as tf

    signature = (tf.TensorSpec((None, *training.x.shape[1:]), tf.as_dtype(training.x.dtype)),
                 tf.TensorSpec((None, training.y.shape[1]), tf.float32))
    return _untuned(tf.data.Dataset.from_generator(
        lambda: training.epochs(first_epoch, epochs), output_signature=signature))


def validation_stream(x: np.ndarray, y_one_hot: np.ndarray, batch_size: int):
    """The validation set as a ``tf.data`` dataset of ``batch_size`` batches."""
    import tensorflow as tf

    return _untuned(tf.data.Dataset.from_tensor_slices((x, y_one_hot)).batch(batch_size))


def _untuned(dataset):
    # with a fixed prefetch depth instead of tf.data's autotuning: destroying an
    # autotuned iterator (Keras makes new ones every epoch) waits for its tuning thread
    # to wake, seconds of an epoch with both cores idle (docs/performance.md)
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(PREFETCHED_BATCHES).with_options(options)


def split_at_whitening(model: keras.Model) -> tuple[keras.Model | None, keras.Model]:
    """A ZCA model as (its fixed first layers up to its whitened image, the rest of it),
    two models sharing its layers and weights; ``(None, a model of all of it)`` for other
    models. Either way the model trained is a new one on the same layers, so the model
    itself (the one logged) is not compiled with the training's optimizer.

    Training applies the first part to each image once and trains the rest on the whitened
    images (12 KiB each in float32, 6 in bfloat16), instead of repeating the 3072 x 3072
    multiply every epoch.
    """
    if preprocess.WHITENED_IMAGE not in {layer.name for layer in model.layers}:
        return None, keras.Model(model.input, model.output, name=model.name)
    whitened = model.get_layer(preprocess.WHITENED_IMAGE).output
    return keras.Model(model.input, whitened), keras.Model(whitened, model.output)


class BestEpoch(keras.callbacks.EarlyStopping):
    """Early stopping that restores the best epoch's weights, and can carry its state
    (best value, best epoch, epochs waited, best weights) over from an interrupted run."""

    def __init__(self, carried: dict | None, carried_weights: list | None, **kwargs):
        super().__init__(**kwargs)
        self.carried = carried
        self.carried_weights = carried_weights

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)  # resets the state ...
        if self.carried is not None:  # ... which an interrupted run hands back
            for key, value in self.carried.items():
                setattr(self, key, value)
            self.best_weights = self.carried_weights


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Integer labels to float32 one-hot rows (label smoothing needs dense targets)."""
    return np.eye(n_classes, dtype=np.float32)[labels]
