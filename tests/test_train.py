import tempfile
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import OPTION_VARIANTS, compose_config, tiny_overrides

from cifar10_mlp import stopping
from cifar10_mlp.data import archive, batches, preprocess
from cifar10_mlp.training import checkpoint, evaluate, model, train

# every test here fits a model for epochs
pytestmark = pytest.mark.slow


def fit_once(cfg, checkpoints=None, callbacks=()):
    split = archive.load(cfg.data, cfg.seed)
    prep = preprocess.fit(cfg.preprocess, split.x_train)
    mlp = model.build(cfg.model, cfg.augment, len(split.class_names), prep, cfg.seed)
    folder = checkpoints or Path(tempfile.mkdtemp())
    history = train.fit(mlp, split, cfg.trainer, cfg.optimizer, cfg.schedule, cfg.augment,
                        cfg.seed, folder,
                        callbacks)
    return mlp, split, history


@pytest.mark.parametrize("variant", [[], *OPTION_VARIANTS.values()],
                         ids=["default", *OPTION_VARIANTS])
def test_same_seed_gives_identical_metrics_and_weights(variant, tiny_cifar, tmp_path):
    tiny_cfg = compose_config([*tiny_overrides(tiny_cifar, tmp_path), *variant])
    first, split, history = fit_once(tiny_cfg)
    second, _, history_again = fit_once(tiny_cfg)
    for timing in (history, history_again):  # wall time is the one thing that may differ
        del timing["epoch_seconds"]
    assert history == history_again
    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    tiny_cfg.seed = tiny_cfg.seed + 1
    _, _, other = fit_once(tiny_cfg)
    assert other["loss"] != history["loss"]


# a ZCA model trains on images whitened once, through a model that shares its layers
WHITENED_ONCE = ["preprocess=zca", "augment=crop_flip"]


@pytest.mark.parametrize("variant", [[], WHITENED_ONCE], ids=["default", "zca"])
def test_best_validation_epoch_weights_are_restored(variant, tiny_cifar, tmp_path):
    tiny_cfg = compose_config([*tiny_overrides(tiny_cifar, tmp_path), *variant])
    tiny_cfg.trainer.epochs = 4
    tiny_cfg.trainer.early_stopping.monitor = "val_loss"
    tiny_cfg.trainer.early_stopping.mode = "min"
    tiny_cfg.trainer.early_stopping.patience = None
    tiny_cfg.optimizer.lr = 0.05  # large steps, so the validation loss moves between epochs
    mlp, split, history = fit_once(tiny_cfg)
    assert len(history["val_loss"]) == 4  # null patience: every epoch runs
    restored = evaluate.measure(mlp, split.x_val, split.y_val, split.class_names, 16)
    # the restored weights are those of the best validation epoch, not of the last, and the
    # model measured on raw images is the one trained (on whitened images, for ZCA)
    best = int(np.argmin(history["val_loss"]))
    assert abs(restored.accuracy - history["val_accuracy"][best]) < 1e-6


def test_learning_rate_follows_the_schedule_per_epoch(tiny_cifar, tmp_path):
    cfg = compose_config([*tiny_overrides(tiny_cifar, tmp_path), "trainer.epochs=3",
                          "schedule=step", "schedule.step_epochs=1", "schedule.gamma=0.5"])
    _, _, history = fit_once(cfg)
    lr = cfg.optimizer.lr
    np.testing.assert_allclose(history["lr"], [lr, lr / 2, lr / 4], rtol=1e-6)


class CountValidationBatches(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batches = []

    def on_test_batch_end(self, batch, logs=None):
        self.batches.append(batch)


def test_a_fit_draws_its_batches_from_one_stream_over_its_epochs(tiny_cifar, tmp_path,
                                                                 monkeypatch):
    # a stream per epoch cost seconds an epoch while TensorFlow tore its iterator down
    streams = []
    every_batch = batches.TrainingBatches.epochs

    def recorded(self, first, stop):
        streams.append((first, stop))
        yield from every_batch(self, first, stop)

    monkeypatch.setattr(batches.TrainingBatches, "epochs", recorded)
    cfg = compose_config([*tiny_overrides(tiny_cifar, tmp_path), "trainer.epochs=3"])
    _, _, history = fit_once(cfg)
    assert streams == [(0, 3)]
    assert len(history["loss"]) == 3


def test_validation_runs_in_the_training_batch_size(tiny_cifar, tmp_path):
    # Keras' own default (32) made long_mlp's validation a fifth of its epoch
    cfg = compose_config([*tiny_overrides(tiny_cifar, tmp_path), "trainer.epochs=1",
                          "trainer.batch_size=8"])
    counter = CountValidationBatches()
    _, split, _ = fit_once(cfg, callbacks=[counter])
    assert len(split.y_val) > 8
    assert len(counter.batches) == -(-len(split.y_val) // 8)


class InterruptAfter(keras.callbacks.Callback):
    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs:
            raise KeyboardInterrupt


@pytest.mark.parametrize("variant", [pytest.param([], id="default"), pytest.param(
    WHITENED_ONCE, id="zca", marks=pytest.mark.slow)])
def test_an_interrupted_fit_goes_on_from_its_checkpoint(variant, tiny_cifar, tmp_path):
    tiny_cfg = compose_config([*tiny_overrides(tiny_cifar, tmp_path), *variant])
    tiny_cfg.trainer.epochs = 5
    tiny_cfg.trainer.early_stopping.patience = None
    with pytest.raises(KeyboardInterrupt):
        fit_once(tiny_cfg, tmp_path / "ck", callbacks=[InterruptAfter(2)])
    saved = checkpoint.read_checkpoint(tmp_path / "ck")
    assert saved["epochs_done"] == 2 and len(saved["history"]) == 2

    mlp, split, history = fit_once(tiny_cfg, tmp_path / "ck")
    assert len(history["loss"]) == 5
    assert history["loss"][:2] == [epoch["loss"] for epoch in saved["history"]]
    lr = tiny_cfg.optimizer.lr  # cosine over 5 epochs: the schedule went on where it stopped
    assert history["lr"][2] < history["lr"][1] < lr
    # the restored weights are the best epoch's over all five, across the interruption
    restored = evaluate.measure(mlp, split.x_val, split.y_val, split.class_names, 16)
    assert restored.accuracy == pytest.approx(max(history["val_accuracy"]), abs=1e-6)


class AskToStopDuring(keras.callbacks.Callback):
    """Asks for a stop after batch 1 of ``epoch`` (from 0), as Ctrl-C would there."""

    def __init__(self, request, epoch):
        super().__init__()
        self.request, self.epoch, self.now = request, epoch, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.now = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.now == self.epoch and batch == 1:
            self.request.ask("Ctrl-C")


# dropout, batch norm, in-model random flips and shifts, crops and MixUp in the batches:
# every random draw a resumed run must repeat
RESUMED_VARIANTS = [
    pytest.param([], id="default"),
    pytest.param([*WHITENED_ONCE, "augment.mixup_alpha=0.2", "model.precision=mixed_bfloat16"],
                 id="zca_crop_mixup_bfloat16", marks=pytest.mark.slow),
    pytest.param(["augment=flip_translate"], id="flip_translate", marks=pytest.mark.slow)]


@pytest.mark.parametrize("stopped_in", [pytest.param(0, id="first_epoch", marks=pytest.mark.slow),
                                        pytest.param(2, id="third_epoch")])
@pytest.mark.parametrize("variant", RESUMED_VARIANTS)
def test_a_fit_stopped_mid_epoch_and_resumed_ends_as_if_never_stopped(
        variant, stopped_in, tiny_cifar, tmp_path):
    tiny_cfg = compose_config([*tiny_overrides(tiny_cifar, tmp_path), *variant,
                               "trainer.epochs=4", "trainer.early_stopping.patience=null"])
    whole, _, expected = fit_once(tiny_cfg, tmp_path / "whole")

    request = stopping.StopRequest()
    with pytest.raises(stopping.StopRequested, match="Ctrl-C"):
        fit_once(tiny_cfg, tmp_path / "ck", [train.StopAtBatch(request),
                                             AskToStopDuring(request, stopped_in)])
    saved = checkpoint.read_checkpoint(tmp_path / "ck")  # the epochs before the stopped one
    assert (saved["epochs_done"] if saved else 0) == stopped_in
    resumed, _, history = fit_once(tiny_cfg, tmp_path / "ck")

    for timing in (expected, history):  # wall time is the one thing that may differ
        del timing["epoch_seconds"]
    assert history == expected
    for a, b in zip(whole.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_run_resumed_after_its_early_stop_trains_no_further(tiny_cifar, tmp_path):
    # stopped after its early-stopping epoch (in its test evaluation, say): what is resumed
    # is the end of training, not one more epoch
    tiny_cfg = compose_config([*tiny_overrides(tiny_cifar, tmp_path), "trainer.epochs=12",
                               "trainer.early_stopping.patience=1", "optimizer.lr=0.05"])
    first, _, history = fit_once(tiny_cfg, tmp_path / "ck")
    assert len(history["loss"]) < 12  # it did stop early
    again, _, resumed = fit_once(tiny_cfg, tmp_path / "ck")
    assert resumed == history
    for a, b in zip(first.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # the best epoch's, restored
