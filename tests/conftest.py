"""Shared fixtures: tiny CIFAR-10 archives in the official format, and composed configs."""

from __future__ import annotations

import importlib.resources
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from cifar10_mlp.cli import CONFIG_MODULE
from cifar10_mlp.config.schema import CIFAR10_CLASSES, register_configs

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CONFIG_DIR = str(importlib.resources.files(CONFIG_MODULE))  # conf/, as the package holds it
PER_BATCH = 20  # images per data batch: 100 training images, 2 per class per batch
N_TEST = PER_BATCH  # the official test batch has as many images as a data batch

register_configs()


@dataclass(frozen=True)
class TinyCifar:
    archive: Path
    folder: Path  # the cifar-10-batches-py folder
    x_train: np.ndarray  # what the loader must return: uint8 (N, 32, 32, 3)
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def class_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noisy images whose mean colour depends on the class, so a model can learn them."""
    base = (labels[:, None, None, None] * 23 + np.array([40, 90, 140])) % 256
    noise = rng.integers(-30, 31, size=(len(labels), 32, 32, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_batch(path: Path, images: np.ndarray, labels, **extra) -> None:
    """One pickled batch exactly as the official archive stores it (channel planes per row)."""
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    batch = {b"batch_label": b"tiny", b"labels": list(labels), b"data": rows,
             b"filenames": [f"img_{i}.png".encode() for i in range(len(images))], **extra}
    with open(path, "wb") as f:
        pickle.dump(batch, f)


def write_tiny_cifar(root: Path, seed: int = 0) -> TinyCifar:
    """Write a tiny cifar-10-batches-py folder and its .tar.gz under ``root``."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    y_train = np.tile(np.arange(10), 10)  # balanced: 10 images per class
    rng.shuffle(y_train)
    x_train = class_images(y_train, rng)
    for i in range(5):
        part = slice(i * PER_BATCH, (i + 1) * PER_BATCH)
        write_batch(folder / f"data_batch_{i + 1}", x_train[part], y_train[part])
    y_test = np.tile(np.arange(10), N_TEST // 10)
    x_test = class_images(y_test, rng)
    write_batch(folder / "test_batch", x_test, y_test)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES],
                     b"num_cases_per_batch": PER_BATCH, b"num_vis": 3072}, f)
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return TinyCifar(archive, folder, x_train, y_train, x_test, y_test)


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory) -> TinyCifar:
    return write_tiny_cifar(tmp_path_factory.mktemp("tiny_cifar"))


def tiny_overrides(tiny: TinyCifar, tmp_path: Path) -> list[str]:
    """Overrides that shrink the default run to seconds on the tiny archive."""
    return [
        f"data.path={tiny.archive}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.val_size=0.2",
        "model.hidden=[32,16]",
        "trainer.epochs=2",
        "trainer.batch_size=16",
        "trainer.jit_compile=false",
        "trainer.verbose=0",
        "evaluation.misclassified_grid=6",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "tracking.experiment=tests",
    ]


def compose_config(overrides: list[str], with_hydra: bool = False,
                   config_name: str = "config") -> DictConfig:
    """The config the CLI would build from these overrides (and Hydra's own with_hydra);
    ``config_name="eda_config"``: cifar10-mlp-eda's."""
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides,
                       return_hydra_config=with_hydra)


@pytest.fixture
def tiny_cfg(tiny_cifar, tmp_path) -> DictConfig:
    return compose_config(tiny_overrides(tiny_cifar, tmp_path))


# the model, preprocessing and training options beyond the default run, as overrides on a
# tiny run (each must train reproducibly and survive logging and loading)
OPTION_VARIANTS = {
    "pca": ["preprocess=pca", "preprocess.components=40"],
    "residual_layer_norm": ["model.block=residual", "model.hidden=[32,32]", "model.norm=layer"],
    "no_norm": ["model.norm=none"],
    "lion": ["optimizer=lion"],
    "crop_flip_mix": ["augment=crop_flip", "augment.mixup_alpha=0.2", "augment.cutmix_alpha=1.0"],
    "bfloat16": ["model.precision=mixed_bfloat16"],
    # augmentation of the whitened image, each image whitened once before training
    "zca_flip_translate": ["preprocess=zca", "augment=flip_translate"],
    "zca_crop_flip_bfloat16": ["preprocess=zca", "augment=crop_flip",
                               "model.precision=mixed_bfloat16"],
    # Keras' own batch norm, dropout and optimizer, as before the fused ones
    "keras_layers_and_optimizer": ["model.fused_layers=false", "optimizer.fused=false"],
    "sgd": ["optimizer=sgd"],
}


class StartedAProcess(AssertionError):
    """A test outside the slow tier started a process."""


@pytest.fixture(autouse=True)
def fast_tests_start_no_process(request, monkeypatch):
    """The fast tier (``-m "not slow"``) starts no process: a test that runs a command, a
    server or a worker is marked ``slow``. (git, which a run asks for its commit, and
    uname, which Python's platform module asks once per process when a library imported
    wants the processor's name, are allowed.)"""
    if request.node.get_closest_marker("slow"):
        return
    import subprocess

    start = subprocess.Popen.__init__

    def refuse(self, args, *rest, **kwargs):
        program = args if isinstance(args, (str, os.PathLike)) else args[0]
        if Path(str(program).split()[0]).name not in ("git", "uname"):
            raise StartedAProcess(f"{request.node.nodeid} started {program}: mark it slow")
        start(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
