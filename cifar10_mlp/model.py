"""The MLP: uint8 image in, preprocessing layers, hidden Dense blocks, softmax out."""

from __future__ import annotations

import keras
import numpy as np

from cifar10_mlp import preprocess
from cifar10_mlp.data import IMAGE_SHAPE


def build(model_cfg, augment_cfg, n_classes: int, prep: preprocess.Preprocessing, seed: int
          ) -> keras.Model:
    """Build the Keras MLP described by a ``model`` config node.

    Training-time augmentation (``augment``) comes first, then the fitted preprocessing;
    each hidden block is Dense -> [BatchNormalization] -> activation -> [Dropout];
    ``seed`` makes the initial weights, augmentation and dropout reproducible.
    """
    inputs = keras.Input(shape=IMAGE_SHAPE, dtype="uint8", name="image")
    x = inputs
    for layer in [*preprocess.augmentation_layers(augment_cfg, seed),
                  *preprocess.as_layers(prep)]:
        x = layer(x)
    regularizer = keras.regularizers.L2(model_cfg.weight_decay) if model_cfg.weight_decay else None
    for i, width in enumerate(model_cfg.hidden, start=1):
        x = keras.layers.Dense(
            width,
            # batch norm's own shift makes a bias redundant
            use_bias=not model_cfg.batch_norm,
            kernel_initializer=_initializer(model_cfg.initializer, seed + i),
            kernel_regularizer=regularizer,
            name=f"dense_{i}",
        )(x)
        if model_cfg.batch_norm:
            x = keras.layers.BatchNormalization(name=f"batch_norm_{i}")(x)
        x = keras.layers.Activation(model_cfg.activation, name=f"{model_cfg.activation}_{i}")(x)
        if model_cfg.dropout > 0:
            x = keras.layers.Dropout(model_cfg.dropout, seed=seed + i, name=f"dropout_{i}")(x)
    outputs = keras.layers.Dense(
        n_classes,
        activation="softmax",
        kernel_initializer=_initializer("glorot_uniform", seed),
        kernel_regularizer=regularizer,
        name="classifier",
    )(x)
    return keras.Model(inputs, outputs, name="cifar10_mlp")


def trainable_parameters(model: keras.Model) -> int:
    """Weights that training updates (fixed preprocessing and batch-norm statistics aside)."""
    return sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)


def _initializer(name: str, seed: int) -> keras.initializers.Initializer:
    return keras.initializers.get({"class_name": name, "config": {"seed": seed}})
