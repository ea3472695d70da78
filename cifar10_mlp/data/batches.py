"""The training batches of every run: the training set in an order drawn for each epoch,
with the augmentations a model layer cannot do: random crops of a padded image (a different
offset per image), alternating flips, MixUp and CutMix (which mix labels).

They run in numpy on the batches (uint8 images, or a ZCA model's whitened images), so the
logged model stays free of them and takes plain images. The order of an epoch and every
batch's draws come from generators seeded by (seed, epoch) and (seed, epoch, batch), so a
run is reproducible whatever order Keras asks for the batches in, and a run resumed from
a checkpoint sees the batches it would have seen had it not been stopped (Keras' own
shuffling draws from TensorFlow's global generator, which a checkpoint cannot restore).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np


class TrainingBatches:
    """(images, soft one-hot labels) batches of a shuffled training set, per epoch."""

    def __init__(self, x: np.ndarray, y_one_hot: np.ndarray, batch_size: int, augment_cfg,
                 seed: int):
        self.cfg = augment_cfg
        self.x, self.y = x, y_one_hot
        self.batch_size = batch_size
        self.seed = seed
        pad = augment_cfg.crop_padding
        # reflected borders, padded once: a crop is then a window at a random offset
        self.padded = (np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
                       if pad else x)
        # alternating flips: each image starts flipped or not at random, then alternates
        self.flip_phase = np.random.default_rng([seed, 1]).integers(0, 2, len(x)).astype(bool)
        self._order: tuple[int | None, np.ndarray | None] = (None, None)

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The shuffled order of the training images in ``epoch`` (drawn once per epoch)."""
        if self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, 2, epoch]).permutation(
                len(self.x)))
        return self._order[1]

    def epochs(self, first: int, stop: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every batch of epochs ``first`` to ``stop - 1``, one epoch after another."""
        for epoch in range(first, stop):
            for index in range(len(self)):
                yield self.batch(epoch, index)

    def batch(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``index`` of ``epoch``."""
        rng = np.random.default_rng([self.seed, 3, epoch, index])
        ids = self.order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]
        flipped = (self.flip_phase[ids] ^ bool(epoch % 2) if self.cfg.flip == "alternating"
                   else np.zeros(len(ids), bool))
        images, labels = self._crops(ids, flipped, rng), self.y[ids]
        mixes = [(mix, alpha) for mix, alpha in ((mixup, self.cfg.mixup_alpha),
                                                 (cutmix, self.cfg.cutmix_alpha)) if alpha > 0]
        if mixes:  # with both asked for, each batch uses one of them, chosen at random
            mix, alpha = mixes[rng.integers(len(mixes))]
            images, labels = mix(images, labels, alpha, rng)
        return images, labels

    def _crops(self, ids: np.ndarray, flipped: np.ndarray, rng: np.random.Generator
               ) -> np.ndarray:
        """The images ``ids``, each cropped at its own random offset of the padded image
        (with crops asked for) and mirrored where ``flipped``."""
        pad, size = self.cfg.crop_padding, self.x.shape[1]
        if not pad and not flipped.any():
            return self.x[ids]
        top, left = (rng.integers(0, 2 * pad + 1, (2, len(ids))) if pad
                     else np.zeros((2, len(ids)), int))
        out = np.empty((len(ids), *self.x.shape[1:]), self.x.dtype)
        # a copy per image: several times faster than one fancy-indexed gather
        for k, (i, row, col, mirror) in enumerate(zip(ids, top, left, flipped, strict=True)):
            window = self.padded[i, row:row + size, col:col + size]
            out[k] = window[:, ::-1] if mirror else window
        return out


def mixup(images: np.ndarray, labels: np.ndarray, alpha: float, rng: np.random.Generator
          ) -> tuple[np.ndarray, np.ndarray]:
    """MixUp (Zhang et al. 2018): each image and label blended with another's of the batch,
    with one weight lambda ~ Beta(alpha, alpha) for the batch."""
    lam = rng.beta(alpha, alpha)
    partner = rng.permutation(len(images))
    blended = lam * images.astype(np.float32) + (1 - lam) * images[partner]
    if np.issubdtype(images.dtype, np.integer):  # uint8 pixels (whitened images are float)
        blended = np.rint(blended)
    return (blended.astype(images.dtype),
            (lam * labels + (1 - lam) * labels[partner]).astype(np.float32))


def cutmix(images: np.ndarray, labels: np.ndarray, alpha: float, rng: np.random.Generator
           ) -> tuple[np.ndarray, np.ndarray]:
    """CutMix (Yun et al. 2019): a box of another image of the batch pasted in, the labels
    weighted by the areas (lambda ~ Beta(alpha, alpha) sets the box's size)."""
    size = images.shape[1]
    lam = rng.beta(alpha, alpha)
    side = int(round(size * math.sqrt(1 - lam)))
    top, left = rng.integers(0, size - side + 1, 2) if side < size else (0, 0)
    partner = rng.permutation(len(images))
    mixed = images.copy()
    mixed[:, top:top + side, left:left + side] = images[partner, top:top + side,
                                                        left:left + side]
    kept = 1 - side * side / (size * size)  # the area actually pasted over
    return mixed, (kept * labels + (1 - kept) * labels[partner]).astype(np.float32)
