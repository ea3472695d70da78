"""Preprocessing: statistics fitted on the training split, applied as Keras layers.

The fitted statistics become the first layers of the model, so validation and
test images (and anyone who loads the logged model) get exactly the transform
fitted on the training split, and raw uint8 images go straight in.

ZCA and PCA are fitted on the training images and their mirror images, so that they
commute with horizontal flips: ZCA's whitened image of a flipped image is the flipped
whitened image. A ZCA model therefore augments the whitened image (``image_out``), and
training whitens each image once instead of once per epoch (``train.fit``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cifar10_mlp.data.archive import IMAGE_SHAPE

CHUNK = 4096  # images per chunk when accumulating statistics in float64
# a flattened (32, 32, 3) image's values in the order of its mirror image's
MIRROR = np.arange(int(np.prod(IMAGE_SHAPE))).reshape(IMAGE_SHAPE)[:, ::-1].ravel()
# the layer of a ZCA model whose output, the whitened image, training computes once
WHITENED_IMAGE = "whitened_image"


@dataclass(frozen=True)
class Preprocessing:
    """Fitted preprocessing: ``(x - mean) / std``, then an optional whitening matrix."""

    name: str
    mean: np.ndarray  # shape (3,) per channel or (3072,) per pixel, in pixel levels 0..255
    std: np.ndarray
    # applied after standardising: (3072, 3072) for ZCA, (3072, k) for PCA to k components
    whitening: np.ndarray | None = None

    @property
    def image_out(self) -> bool:
        """Whether its output is again an image (ZCA) whose augmentation can follow it."""
        return self.name == "zca"


def fit(prep_cfg, x_train: np.ndarray) -> Preprocessing:
    """Fit the preprocessing named by a ``preprocess`` config node on training images only."""
    flat = x_train.reshape(len(x_train), -1)
    if prep_cfg.name == "scale":
        return Preprocessing("scale", np.zeros(3), np.full(3, 255.0))
    if prep_cfg.name == "standardize":
        mean, var = _moments(x_train.reshape(-1, 3))
        return Preprocessing("standardize", mean, _safe_std(var))
    if prep_cfg.name == "pixel_standardize":
        mean, var = _moments(flat)
        return Preprocessing("pixel_standardize", mean, _safe_std(var))
    if prep_cfg.name in ("zca", "pca"):
        mean, _ = _moments(flat)
        mean = (mean + mean[MIRROR]) / 2  # the images and their mirror images
        eigvals, eigvecs = _covariance_eigen(flat, mean)
        scale = 1.0 / np.sqrt(np.maximum(eigvals, 0.0) + prep_cfg.epsilon)
        if prep_cfg.name == "zca":  # U diag(1/sqrt(s + eps)) U^T: whitened, still an image
            whitening = (eigvecs * scale) @ eigvecs.T
        else:  # the top k components, whitened: k numbers per image instead of 3072
            top = np.argsort(eigvals)[::-1][:prep_cfg.components]
            whitening = eigvecs[:, top] * scale[top]
        return Preprocessing(prep_cfg.name, mean, np.full_like(mean, 255.0), whitening)
    raise ValueError(f"preprocess.name={prep_cfg.name!r} is not a known preprocessing")


def as_layers(prep: Preprocessing, precision: str = "float32") -> list:
    """Keras layers that map uint8 images (N, 32, 32, 3) to preprocessed vectors (N, 3072),
    or for ZCA (``image_out``) to whitened images (N, 32, 32, 3), the layer
    :data:`WHITENED_IMAGE`.

    ``precision`` (a Keras dtype policy) is the whitening multiply's, the costly one.
    """
    import keras

    flatten = keras.layers.Flatten(name="flatten")
    if prep.mean.shape == (3,):
        # per-channel statistics (scale, standardize) act on the image before flattening
        return [_normalization(prep), flatten]
    layers = [flatten, _normalization(prep)]
    if prep.whitening is not None:
        n_in, n_out = prep.whitening.shape
        whiten = keras.layers.Dense(n_out, use_bias=False, trainable=False,
                                    name=f"{prep.name}_whitening", dtype=precision)
        whiten.build((None, n_in))
        whiten.set_weights([prep.whitening.astype(np.float32)])
        layers.append(whiten)
    if prep.image_out:
        # in the whitening's precision: the images whitened once take half the memory
        # in bfloat16, and hold what the bfloat16 multiply gave
        layers.append(keras.layers.Reshape(IMAGE_SHAPE, name=WHITENED_IMAGE, dtype=precision))
    return layers


def augmentation_layers(augment_cfg, seed: int) -> list:
    """Random flips and translations of the raw image; Keras applies them only in training.
    (Crops, alternating flips and mixing are done on the batches: ``batches.py``.)"""
    import keras

    layers = []
    if augment_cfg.flip == "random":
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed, name="random_flip"))
    if augment_cfg.translate > 0:
        layers.append(keras.layers.RandomTranslation(
            augment_cfg.translate, augment_cfg.translate, fill_mode="reflect", seed=seed,
            name="random_translation"))
    return layers


def _normalization(prep: Preprocessing):
    import keras

    return keras.layers.Normalization(axis=-1, mean=prep.mean.astype(np.float32),
                                      variance=np.square(prep.std).astype(np.float32),
                                      name=prep.name)


def _moments(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and variances of a uint8 matrix, in float64, without a float copy of it."""
    total = np.zeros(rows.shape[1])
    squares = np.zeros(rows.shape[1])
    step = CHUNK * max(1, 3072 // rows.shape[1])
    for start in range(0, len(rows), step):
        chunk = rows[start:start + step].astype(np.float64)
        total += chunk.sum(axis=0)
        squares += np.square(chunk).sum(axis=0)
    mean = total / len(rows)
    return mean, np.maximum(squares / len(rows) - np.square(mean), 0.0)


def _safe_std(var: np.ndarray) -> np.ndarray:
    # a constant pixel (possible in tiny or cropped data) is centred but not scaled
    std = np.sqrt(var)
    return np.where(std > 0, std, 1.0)


def _covariance_eigen(flat: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues s and eigenvectors U (columns) of the covariance of x/255 over the images
    and their mirror images (``mean``: theirs)."""
    cov = np.zeros((flat.shape[1], flat.shape[1]))
    for start in range(0, len(flat), CHUNK):
        centred = ((flat[start:start + CHUNK] - mean) / 255.0).astype(np.float32)
        cov += centred.T @ centred  # float32 products, accumulated in float64
    cov /= len(flat)
    cov = (cov + cov[MIRROR][:, MIRROR]) / 2  # a mirror image's covariance, permuted
    return np.linalg.eigh(cov)
