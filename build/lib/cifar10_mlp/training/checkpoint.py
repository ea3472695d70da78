"""What an interrupted run needs to go on: its weights, optimizer state and logs, saved
after every epoch, written while the next epoch trains."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

LAST, BEST, STATE = "last.npz", "best.npz", "state.json"


class Checkpointer(keras.callbacks.Callback):
    """After every epoch, saves the run's state in ``folder``.

    ``last.npz`` holds the model's weights, its random generators' states and the
    optimizer's variables, ``best.npz`` the weights of the best epoch so far
    (``stopping.best_weights``), ``state.json`` the per-epoch logs and the early-stopping
    state. The epoch's values are taken at its end (TensorFlow tensors do not change when
    their variables move on) and written by a thread while the next epoch trains, each
    file whole and then renamed, so an interruption leaves the previous epoch's
    checkpoint intact. The next epoch's checkpoint, and the end of training, wait for the
    write; a failed write is raised then.

    ``saved`` gets each epoch's number (from 1) and logs once its checkpoint is on disk,
    on the writing thread: what it records (the run's metrics) is then never ahead of
    what a resumed run starts from, however the process ends.
    """

    def __init__(self, folder: Path, stopping, history: list[dict[str, float]],
                 saved: Callable[[int, dict[str, float]], None] | None = None):
        super().__init__()
        self.folder = folder
        self.stopping = stopping
        self.history = history
        self.saved = saved
        self._writer: threading.Thread | None = None
        self._failure: BaseException | None = None

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        self.history.append({k: float(v) for k, v in (logs or {}).items()})
        state = {"epochs_done": epoch + 1, "history": list(self.history),
                 "early_stopping": {"best": float(self.stopping.best),
                                    "best_epoch": self.stopping.best_epoch,
                                    "wait": self.stopping.wait}}
        last = [tf.identity(v.value) for v in _saved_variables(self.model)]
        best = self.stopping.best_weights if self.stopping.best_epoch == epoch else None
        self.wait()
        self._writer = threading.Thread(target=self._write, args=(last, best, state),
                                        name="checkpoint-writer")
        self._writer.start()

    def on_train_end(self, logs=None):
        self.wait()

    def wait(self) -> None:
        """Wait for the checkpoint being written; raise what its writing raised."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def _write(self, last, best, state) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if best is not None:
                _replace(self.folder / BEST, lambda tmp: np.savez(tmp, *best))
            _replace(self.folder / LAST,
                     lambda tmp: np.savez(tmp, *(tensor.numpy() for tensor in last)))
            _replace(self.folder / STATE, lambda tmp: Path(tmp).write_text(json.dumps(state)))
            if self.saved is not None:
                self.saved(state["epochs_done"], state["history"][-1])
        except BaseException as failure:  # handed to the training thread by wait()
            self._failure = failure


def read_checkpoint(folder: Path) -> dict | None:
    """The saved state of an interrupted run (per-epoch logs, epochs done), if any."""
    try:
        return json.loads((folder / STATE).read_text())
    except (OSError, ValueError):
        return None


def restore(model: keras.Model, folder: Path) -> list[np.ndarray]:
    """Put the checkpoint's weights and optimizer state back into ``model`` (compiled, its
    optimizer built); return the best epoch's weights."""
    variables = _saved_variables(model)
    saved = load_arrays(folder / LAST)
    if [tuple(v.shape) for v in variables] != [a.shape for a in saved]:
        raise ValueError(f"the checkpoint in {folder} was saved from another model or "
                         "optimizer; remove it to start over")
    for variable, value in zip(variables, saved, strict=True):
        variable.assign(value)
    return load_arrays(folder / BEST)


def load_arrays(path: Path) -> list[np.ndarray]:
    """The arrays ``np.savez`` wrote, in their order."""
    with np.load(path) as arrays:
        return [arrays[f"arr_{i}"] for i in range(len(arrays.files))]


def _saved_variables(model: keras.Model) -> list:
    # variables: the weights and the states of the layers' random generators (dropout,
    # augmentation), so a resumed run draws what it would have drawn
    return [*model.variables, *model.optimizer.variables]


def _replace(path: Path, write) -> None:
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    write(str(tmp))
    os.replace(tmp, path)
