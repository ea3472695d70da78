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

STATE = "state.json"
# each array file (arrays one after another, as np.save writes them) has two slots,
# written in turn: the one being overwritten is never the one state.json names. Writing
# into memory and files that exist already spares the kernel the page faults that cost
# seconds of an epoch with fresh ones (docs/performance.md)
SLOTS = {"last": ("last-0.arrays", "last-1.arrays"), "best": ("best-0.arrays", "best-1.arrays")}
# a checkpoint written before the slots had one np.savez file of each
BEFORE_SLOTS = {"last": "last.npz", "best": "best.npz"}


class Checkpointer(keras.callbacks.Callback):
    """After every epoch, saves the run's state in ``folder``.

    ``last`` holds the model's weights, its random generators' states and the optimizer's
    variables, ``best`` the weights of the best epoch so far (``stopping.best_weights``),
    ``state.json`` the per-epoch logs, the early-stopping state and which slot
    (:data:`SLOTS`) holds each. The epoch's values are copied at its end (into arrays kept
    from epoch to epoch) and written by a thread while the next epoch trains: the arrays
    into the slots ``state.json`` does not name, then
    ``state.json`` whole and renamed, so an interruption leaves the previous epoch's
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
        self._last: list[np.ndarray] | None = None  # the epoch's values, for the writer
        # the files the checkpoint on disk (a resumed run's) uses
        carried = read_checkpoint(folder)
        self._files = dict(carried.get("files", BEFORE_SLOTS)) if carried else {}

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        self.history.append({k: float(v) for k, v in (logs or {}).items()})
        state = {"epochs_done": epoch + 1, "history": list(self.history),
                 "early_stopping": {"best": float(self.stopping.best),
                                    "best_epoch": self.stopping.best_epoch,
                                    "wait": self.stopping.wait}}
        best = self.stopping.best_weights if self.stopping.best_epoch == epoch else None
        self.wait()  # the writer is done with the arrays
        # np.asarray of a tensor is a view; tf.identity reads the variable without a copy
        values = [np.asarray(tf.identity(v.value)) for v in _saved_variables(self.model)]
        if self._last is None:
            self._last = [np.empty_like(value) for value in values]
        for kept, value in zip(self._last, values, strict=True):
            np.copyto(kept, value)
        self._writer = threading.Thread(target=self._write, args=(self._last, best, state),
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
            files = dict(self._files)
            for kind, arrays in (("best", best), ("last", last)):
                if arrays is not None:
                    files[kind] = _other_slot(kind, self._files.get(kind))
                    save_arrays(self.folder / files[kind], arrays)
            state["files"] = files
            tmp = self.folder / f".{STATE}.tmp"
            tmp.write_text(json.dumps(state))
            os.replace(tmp, self.folder / STATE)
            self._files = files
            if self.saved is not None:
                self.saved(state["epochs_done"], state["history"][-1])
        except BaseException as failure:  # handed to the training thread by wait()
            self._failure = failure


def _other_slot(kind: str, in_use: str | None) -> str:
    """The slot of ``kind`` that the checkpoint on disk does not use."""
    first, second = SLOTS[kind]
    return second if in_use == first else first


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
    files = read_checkpoint(folder).get("files", BEFORE_SLOTS)
    saved = load_arrays(folder / files["last"])
    if [tuple(v.shape) for v in variables] != [a.shape for a in saved]:
        raise ValueError(f"the checkpoint in {folder} was saved from another model or "
                         "optimizer; remove it to start over")
    for variable, value in zip(variables, saved, strict=True):
        variable.assign(value)
    return load_arrays(folder / files["best"])


def save_arrays(path: Path, arrays: list[np.ndarray]) -> None:
    """Write ``arrays`` one after another into ``path`` (overwritten in place)."""
    with open(path, "wb") as file:
        for array in arrays:
            np.save(file, array)  # straight from the array's memory: no copy


def load_arrays(path: Path) -> list[np.ndarray]:
    """The arrays :func:`save_arrays` wrote, in their order (or ``np.savez``, before the
    slots)."""
    if path.suffix == ".npz":
        with np.load(path) as arrays:
            return [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
    arrays, size = [], path.stat().st_size
    with open(path, "rb") as file:
        while file.tell() < size:
            arrays.append(np.load(file))
    return arrays


def _saved_variables(model: keras.Model) -> list:
    # variables: the weights and the states of the layers' random generators (dropout,
    # augmentation), so a resumed run draws what it would have drawn
    return [*model.variables, *model.optimizer.variables]

