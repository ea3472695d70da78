"""CIFAR-10 from the official "python version" archive (or its folder) to uint8 arrays.

Reads ``cifar-10-python.tar.gz`` or an extracted ``cifar-10-batches-py/`` folder,
checks every batch, caches the decoded arrays keyed by the source's sha256, and
carves a stratified, seeded validation split off the training set. Images stay
uint8 (N, 32, 32, 3); scaling happens inside the model.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifar10_mlp.config.schema import CIFAR10_CLASSES
from cifar10_mlp.data import cache
from cifar10_mlp.data.batch_pickle import BatchUnpickler, UnsafePickle
from cifar10_mlp.errors import UserError

log = logging.getLogger(__name__)

BATCH_FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
IMAGE_SHAPE = (32, 32, 3)
N_PIXELS = 32 * 32 * 3
N_CLASSES = 10
KERAS_SOURCE = "keras.datasets.cifar10"


class DataError(UserError, ValueError):
    """The data could not be read or is not CIFAR-10; the message names the file."""


@dataclass(frozen=True)
class Cifar10:
    """The whole decoded data set, as read from one source."""

    x_train: np.ndarray  # uint8 (N, 32, 32, 3)
    y_train: np.ndarray  # int64 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    digest: str  # sha256 of the source archive or batch files
    source: str


@dataclass(frozen=True)
class DataSplit:
    """Train / validation / test arrays for one run, with labels 0..len(class_names)-1."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    digest: str
    source: str


def load(data_cfg, seed: int) -> DataSplit:
    """Read the data named by a ``data`` config node and split it for one run."""
    full = read_cifar10(data_cfg.path, data_cfg.cache_dir)
    x, y, x_test, y_test, class_names = full.x_train, full.y_train, full.x_test, full.y_test, \
        full.class_names
    if data_cfg.classes is not None:
        x, y, _ = select_classes(x, y, class_names, data_cfg.classes)
        x_test, y_test, class_names = select_classes(x_test, y_test, class_names,
                                                     data_cfg.classes)
    if data_cfg.train_limit is not None and data_cfg.train_limit < len(y):
        keep = _stratified_indices(y, data_cfg.train_limit, seed, "data.train_limit")
        x, y = x[keep], y[keep]
    n_val = round(len(y) * data_cfg.val_size)
    val = _stratified_indices(y, n_val, seed, "data.val_size")
    train = np.setdiff1d(np.arange(len(y)), val)
    log.info("%d classes; %d training, %d validation, %d test images", len(class_names),
             len(train), len(val), len(y_test))
    return DataSplit(x[train], y[train], x[val], y[val], x_test, y_test, class_names,
                     full.digest, full.source)


def read_cifar10(path: str | os.PathLike | None, cache_dir: str | os.PathLike | None = None
                 ) -> Cifar10:
    """Decode CIFAR-10 from an archive or folder, through the cache when one is given.

    With ``path=None`` the data comes from ``keras.datasets.cifar10.load_data()``,
    which downloads it.
    """
    if path is None:
        return _read_keras()
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; data.path (or $CIFAR10_PATH) must "
                        f"name cifar-10-python.tar.gz or its extracted {BATCH_FOLDER}/ folder")
    log.info("reading CIFAR-10 from %s", path)
    digest = source_digest(path)
    cache_file = Path(cache_dir).expanduser() / f"cifar10-{digest[:16]}.npz" if cache_dir else None
    if cache_file is not None:
        cached = cache.read(cache_file, digest, IMAGE_SHAPE)
        if cached is not None:
            log.info("decoded arrays from the cache %s", cache_file)
            return Cifar10(**{**cached, "class_names": tuple(map(str, cached["class_names"]))},
                           digest=digest, source=str(path))
    log.info("decoding the batches (sha256 %s...)", digest[:16])
    batches = dict(_iter_archive(path) if path.is_file() else _iter_folder(path))
    data = _assemble(batches, path, digest)
    if cache_file is not None:
        cache.write(cache_file, digest, {**vars(data), "class_names": np.array(data.class_names)})
        log.info("cached the decoded arrays in %s", cache_file)
    return data


def source_digest(path: Path) -> str:
    """sha256 of an archive file, or of the batch files of a folder in a fixed order."""
    sha = hashlib.sha256()
    files = [path] if path.is_file() else [_batch_folder(path) / n
                                           for n in (*TRAIN_BATCHES, TEST_BATCH, META)]
    for file in files:
        if not file.is_file():
            raise DataError(f"{file}: missing; a CIFAR-10 folder holds "
                            f"{', '.join((*TRAIN_BATCHES, TEST_BATCH, META))}")
        with open(file, "rb") as f:
            while chunk := f.read(1 << 22):
                sha.update(chunk)
    return sha.hexdigest()


def select_classes(x: np.ndarray, y: np.ndarray, class_names: tuple[str, ...],
                   wanted: list[str]) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Keep the images of ``wanted`` classes, relabelled 0..k-1 in the order given."""
    unknown = [c for c in wanted if c not in class_names]
    if unknown:
        raise DataError(f"data.classes: {unknown} not in the data's classes {list(class_names)}")
    old_ids = [class_names.index(c) for c in wanted]
    relabel = np.full(len(class_names), -1, dtype=np.int64)
    relabel[old_ids] = np.arange(len(wanted))
    keep = relabel[y] >= 0
    return x[keep], relabel[y[keep]], tuple(wanted)


def _stratified_indices(y: np.ndarray, n: int, seed: int, key: str) -> np.ndarray:
    """A seeded sample of ``n`` indices with the class proportions of ``y``, sorted."""
    from sklearn.model_selection import train_test_split  # slow import, only needed here

    try:
        _, picked = train_test_split(np.arange(len(y)), test_size=n, stratify=y,
                                     random_state=seed)
    except ValueError as err:
        raise DataError(f"{key}: cannot take a stratified sample of {n} from {len(y)} "
                        f"images of {len(np.unique(y))} classes ({err})") from err
    return np.sort(picked)


def _batch_folder(path: Path) -> Path:
    nested = path / BATCH_FOLDER
    return nested if nested.is_dir() else path


def _iter_folder(path: Path) -> Iterator[tuple[str, dict]]:
    folder = _batch_folder(path)
    for name in (*TRAIN_BATCHES, TEST_BATCH, META):
        file = folder / name
        with open(file, "rb") as f:
            yield name, _unpickle(f, file)


def _iter_archive(path: Path) -> Iterator[tuple[str, dict]]:
    wanted = {*TRAIN_BATCHES, TEST_BATCH, META}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:  # sequential: a .tar.gz cannot seek backwards cheaply
                name = Path(member.name).name
                if member.isfile() and name in wanted:
                    yield name, _unpickle(tar.extractfile(member), Path(f"{path}:{member.name}"))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        detail = str(err).splitlines()[0].rstrip(":")  # tarfile lists every method it tried
        raise DataError(f"{path}: not a readable CIFAR-10 archive, truncated or corrupt "
                        f"({type(err).__name__}: {detail})") from err


def _unpickle(f, where: Path) -> dict:
    try:
        batch = BatchUnpickler(f, encoding="bytes").load()
    except UnsafePickle as err:
        raise DataError(f"{where}: refused: its pickle calls {err}, which no CIFAR-10 batch "
                        "holds (only bytes, lists, dicts and numpy arrays are read); "
                        "nothing in it was run") from err
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            ImportError, IndexError) as err:
        raise DataError(f"{where}: not a pickled CIFAR-10 batch, truncated or corrupt "
                        f"({type(err).__name__}: {err})") from err
    if not isinstance(batch, dict):
        raise DataError(f"{where}: expected a pickled dict, found {type(batch).__name__}")
    return batch


def _assemble(batches: dict[str, dict], path: Path, digest: str) -> Cifar10:
    missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH, META) if n not in batches]
    if missing:
        raise DataError(f"{path}: missing {', '.join(missing)}; is this cifar-10-python.tar.gz?")
    meta = batches[META]
    class_names = tuple(_text(n) for n in meta.get(b"label_names", ()))
    if len(class_names) != N_CLASSES:
        raise DataError(f"{path}: {META} lists {len(class_names)} label names, expected "
                        f"{N_CLASSES}")
    per_batch = meta.get(b"num_cases_per_batch")
    train = [_check_batch(batches[n], f"{path}:{n}", per_batch) for n in TRAIN_BATCHES]
    x_test, y_test = _check_batch(batches[TEST_BATCH], f"{path}:{TEST_BATCH}", per_batch)
    return Cifar10(
        x_train=np.concatenate([x for x, _ in train]),
        y_train=np.concatenate([y for _, y in train]),
        x_test=x_test,
        y_test=y_test,
        class_names=class_names,
        digest=digest,
        source=str(path),
    )


def _check_batch(batch: dict, where: str, per_batch: int | None
                 ) -> tuple[np.ndarray, np.ndarray]:
    data, labels = batch.get(b"data"), batch.get(b"labels")
    if not isinstance(data, np.ndarray) or labels is None:
        raise DataError(f"{where}: a batch needs b'data' (uint8 array) and b'labels'")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != N_PIXELS:
        raise DataError(f"{where}: b'data' is {data.dtype} {data.shape}, expected uint8 "
                        f"(n, {N_PIXELS})")
    y = np.asarray(labels, dtype=np.int64)
    if y.shape != (len(data),):
        raise DataError(f"{where}: {len(y)} labels for {len(data)} images")
    if len(y) == 0 or per_batch is not None and len(y) != per_batch:
        raise DataError(f"{where}: {len(y)} images, but batches.meta says {per_batch} per batch")
    if y.min() < 0 or y.max() >= N_CLASSES:
        raise DataError(f"{where}: labels outside 0..{N_CLASSES - 1} "
                        f"(found {y.min()}..{y.max()})")
    # rows hold 1024 red, 1024 green, 1024 blue values; Keras wants channels last
    x = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return x, y


def _text(name) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)


def _read_keras() -> Cifar10:
    import keras

    (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    sha = hashlib.sha256()
    for array in (x_train, y_train, x_test, y_test):
        sha.update(np.ascontiguousarray(array).data)
    return Cifar10(x_train, y_train.ravel().astype(np.int64), x_test,
                   y_test.ravel().astype(np.int64), CIFAR10_CLASSES, sha.hexdigest(),
                   KERAS_SOURCE)
