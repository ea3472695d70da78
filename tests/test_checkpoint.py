"""Checkpoints hold each epoch's values as they were at its end, written in the background."""

import json

import keras
import numpy as np
import pytest

from cifar10_mlp.training import checkpoint


class Stopping:
    best, best_epoch, wait = 0.5, 0, 0

    def __init__(self, weights):
        self.best_weights = weights


def compiled_model():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def test_a_checkpoint_holds_the_epoch_end_values_though_training_moves_on(tmp_path):
    model = compiled_model()
    at_end = [v.numpy().copy() for v in [*model.weights, *model.optimizer.variables]]
    saver = checkpoint.Checkpointer(tmp_path / "ck", Stopping(model.get_weights()), [])
    saver.set_model(model)
    saver.on_epoch_end(0, {"loss": 1.5})
    for variable in model.weights:  # the next epoch changes the weights at once
        variable.assign(np.zeros(variable.shape))
    saver.wait()
    state = json.loads((tmp_path / "ck" / checkpoint.STATE).read_text())
    saved = checkpoint.load_arrays(tmp_path / "ck" / state["files"]["last"])
    for ours, expected in zip(saved, at_end, strict=True):
        np.testing.assert_array_equal(ours, expected)
    assert state["epochs_done"] == 1 and state["history"] == [{"loss": 1.5}]

    fresh = compiled_model()  # and a model of the same shape takes it all back
    best = checkpoint.restore(fresh, tmp_path / "ck")
    np.testing.assert_array_equal(fresh.weights[0].numpy(), at_end[0])
    np.testing.assert_array_equal(best[0], at_end[0])


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    model = compiled_model()
    saver = checkpoint.Checkpointer(tmp_path, Stopping(model.get_weights()), [])
    saver.set_model(model)
    saver.on_epoch_end(0, {})
    saver.wait()
    inputs = keras.Input((5,))
    other = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    other.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    other.optimizer.build(other.trainable_variables)
    with pytest.raises(ValueError, match="saved from another model"):
        checkpoint.restore(other, tmp_path)


def test_a_failed_write_is_raised_in_the_training_thread(tmp_path):
    model = compiled_model()
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    saver = checkpoint.Checkpointer(blocked, Stopping(model.get_weights()), [])
    saver.set_model(model)
    saver.on_epoch_end(0, {})
    with pytest.raises(OSError):
        saver.wait()


def test_an_epoch_is_handed_on_only_once_its_checkpoint_is_on_disk(tmp_path):
    # a run logs its epochs from here: were one logged first and the process then killed,
    # the resumed run would train and log it again
    model = compiled_model()
    on_disk_when_handed = []

    def saved(epoch, logs):
        state = json.loads((tmp_path / checkpoint.STATE).read_text())
        on_disk_when_handed.append((epoch, logs, state["epochs_done"]))

    saver = checkpoint.Checkpointer(tmp_path, Stopping(model.get_weights()), [], saved)
    saver.set_model(model)
    saver.on_epoch_end(0, {"loss": 2.0})
    saver.on_epoch_end(1, {"loss": 1.0})
    saver.wait()
    assert on_disk_when_handed == [(1, {"loss": 2.0}, 1), (2, {"loss": 1.0}, 2)]


def weights_of(model):
    return [v.numpy().copy() for v in model.weights]


def test_a_write_cut_short_leaves_the_previous_epochs_checkpoint(tmp_path, monkeypatch):
    model = compiled_model()
    saver = checkpoint.Checkpointer(tmp_path, Stopping(model.get_weights()), [])
    saver.set_model(model)
    for epoch in range(2):  # both slots written once
        for variable in model.weights:
            variable.assign(np.full(variable.shape, float(epoch)))
        saver.on_epoch_end(epoch, {"loss": 2.0 - epoch})
        saver.wait()
    second = weights_of(model)
    for variable in model.weights:
        variable.assign(np.full(variable.shape, 2.0))

    def dies_half_way(file, array):  # the disk filled, or the process was killed
        file.write(b"\x93NUMPY half an array")
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoint.np, "save", dies_half_way)
    saver.on_epoch_end(2, {"loss": 0.5})
    with pytest.raises(OSError, match="No space"):
        saver.wait()
    monkeypatch.undo()
    assert checkpoint.read_checkpoint(tmp_path)["epochs_done"] == 2
    fresh = compiled_model()
    checkpoint.restore(fresh, tmp_path)
    for ours, expected in zip(weights_of(fresh), second, strict=True):
        np.testing.assert_array_equal(ours, expected)


def test_a_checkpoint_written_before_the_slots_is_restored(tmp_path):
    model = compiled_model()
    variables = [*model.variables, *model.optimizer.variables]
    np.savez(tmp_path / "last.npz", *(v.numpy() for v in variables))
    np.savez(tmp_path / "best.npz", *model.get_weights())
    (tmp_path / checkpoint.STATE).write_text(json.dumps(
        {"epochs_done": 1, "history": [{"loss": 1.0}],
         "early_stopping": {"best": 0.5, "best_epoch": 0, "wait": 0}}))
    fresh = compiled_model()
    best = checkpoint.restore(fresh, tmp_path)
    for ours, expected in zip(weights_of(fresh), weights_of(model), strict=True):
        np.testing.assert_array_equal(ours, expected)
    np.testing.assert_array_equal(best[0], model.get_weights()[0])
    saver = checkpoint.Checkpointer(tmp_path, Stopping(model.get_weights()), [])
    saver.set_model(fresh)  # and it goes on in the slots
    saver.on_epoch_end(1, {"loss": 0.9})  # not the best epoch: its best stays in best.npz
    saver.wait()
    assert checkpoint.read_checkpoint(tmp_path)["files"]["last"] in checkpoint.SLOTS["last"]
    again = compiled_model()
    np.testing.assert_array_equal(checkpoint.restore(again, tmp_path)[0],
                                  model.get_weights()[0])
