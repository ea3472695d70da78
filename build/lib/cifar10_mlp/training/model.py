"""The MLP: uint8 image in, preprocessing layers, hidden Dense blocks, softmax out."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from cifar10_mlp.data import preprocess
from cifar10_mlp.data.archive import IMAGE_SHAPE


def build(model_cfg, augment_cfg, n_classes: int, prep: preprocess.Preprocessing, seed: int
          ) -> keras.Model:
    """Build the Keras MLP described by a ``model`` config node.

    Training-time augmentation (``augment``) comes first, then the fitted preprocessing;
    with ZCA, whose output is an image again, the augmentation follows the whitening.
    ``block=dense``: each width in ``hidden`` is Dense -> [norm] -> activation -> [Dropout].
    ``block=residual``: a Dense projection to the width, then one pre-norm inverted-bottleneck
    block per entry of ``hidden`` (x + Dense(w)(Dropout(act(Dense(expansion * w)(norm(x)))))),
    and a final norm. ``seed`` makes the initial weights, augmentation and dropout reproducible.
    ``precision`` (a Keras dtype policy) applies to the whitening multiply and the hidden
    layers; the softmax classifier computes in float32. ``fused_layers`` trains batch norm
    and dropout with the cheaper layers of :mod:`fused_layers` (Keras' own at inference).
    """
    policy = model_cfg.precision
    layers = _Layers.fused() if model_cfg.fused_layers else _Layers.keras()
    inputs = keras.Input(shape=IMAGE_SHAPE, dtype="uint8", name="image")
    augmentation = preprocess.augmentation_layers(augment_cfg, seed)
    fixed = preprocess.as_layers(prep, policy)
    # a ZCA-whitened image is still an image, and whitening commutes with flips: augmenting
    # after it lets training whiten each image once (train.fit), not once per epoch
    # the flattening keeps the whitened image in the model's precision (no round trip)
    stages = ([*fixed, *augmentation, keras.layers.Flatten(name="flatten_whitened", dtype=policy)]
              if prep.image_out else [*augmentation, *fixed])
    x = inputs
    for layer in stages:
        x = layer(x)
    regularizer = keras.regularizers.L2(model_cfg.weight_decay) if model_cfg.weight_decay else None

    def dense(width: int, name: str, use_bias: bool = True, seed_offset: int = 0):
        return keras.layers.Dense(
            width, use_bias=use_bias, name=name, kernel_regularizer=regularizer,
            kernel_initializer=_initializer(model_cfg.initializer, seed + seed_offset),
            dtype=policy)

    def dropout(i: int, name: str):
        return layers.dropout(model_cfg.dropout, seed=seed + i, name=name, dtype=policy)

    def activation(i: int):
        return keras.layers.Activation(model_cfg.activation, name=f"{model_cfg.activation}_{i}",
                                       dtype=policy)

    if model_cfg.block == "dense":
        for i, width in enumerate(model_cfg.hidden, start=1):
            # batch norm's own shift makes a bias redundant
            x = dense(width, f"dense_{i}", use_bias=model_cfg.norm != "batch", seed_offset=i)(x)
            x = _norm(layers, model_cfg.norm, f"{model_cfg.norm}_norm_{i}", policy, x)
            x = activation(i)(x)
            if model_cfg.dropout > 0:
                x = dropout(i, f"dropout_{i}")(x)
    else:
        width = model_cfg.hidden[0]
        x = dense(width, "projection", seed_offset=1000)(x)
        for i, _ in enumerate(model_cfg.hidden, start=1):
            h = _norm(layers, model_cfg.norm, f"{model_cfg.norm}_norm_{i}", policy, x)
            h = dense(model_cfg.expansion * width, f"expand_{i}", seed_offset=2 * i)(h)
            h = activation(i)(h)
            if model_cfg.dropout > 0:
                h = dropout(i, f"dropout_{i}")(h)
            h = dense(width, f"contract_{i}", seed_offset=2 * i + 1)(h)
            x = keras.layers.Add(name=f"residual_{i}", dtype=policy)([x, h])
        x = _norm(layers, model_cfg.norm, f"{model_cfg.norm}_norm_out", policy, x)
    outputs = keras.layers.Dense(
        n_classes,
        activation="softmax",
        kernel_initializer=_initializer("glorot_uniform", seed),
        kernel_regularizer=regularizer,
        name="classifier",
        dtype="float32",  # probabilities in full precision, whatever the hidden layers use
    )(x)
    return keras.Model(inputs, outputs, name="cifar10_mlp")


def _norm(layers: _Layers, kind: str, name: str, policy: str, x):
    """``x`` through batch or layer normalisation, or unchanged for ``none``."""
    if kind == "batch":
        return layers.batch_norm(name=name, dtype=policy)(x)
    if kind == "layer":
        return keras.layers.LayerNormalization(name=name, dtype=policy)(x)
    return x


@dataclass(frozen=True)
class _Layers:
    """The classes a model's batch norm and dropout layers are made of."""

    batch_norm: type
    dropout: type

    @staticmethod
    def keras() -> _Layers:
        return _Layers(keras.layers.BatchNormalization, keras.layers.Dropout)

    @staticmethod
    def fused() -> _Layers:
        from cifar10_mlp.training import fused_layers

        return _Layers(fused_layers.FusedBatchNormalization, fused_layers.CheapDropout)


def matmul_flops(model: keras.Model) -> dict[str, int]:
    """Floating-point operations per image in the model's Dense layers (all but a sliver
    of its work), as computed, not as 6 x parameters: ``inference`` is the forward pass
    (2 per weight); ``train`` a training step's, which adds, per trainable weight, 2 for its
    gradient and 2 for the gradient of the layer's input, except in the first trainable
    layer, whose input needs none; ``validation`` an epoch's validation pass. Fixed layers
    (ZCA or PCA whitening) run forward only, and a ZCA model's only once per image, before
    training (``once``; ``train.split_at_whitening``), not in every epoch."""
    whitened_once = preprocess.WHITENED_IMAGE in {layer.name for layer in model.layers}
    flops = {"inference": 0, "train": 0, "validation": 0, "once": 0}
    first = True
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Dense):
            continue
        forward = 2 * int(np.prod(layer.kernel.shape))
        flops["inference"] += forward
        if not layer.trainable and whitened_once:
            flops["once"] += forward
            continue
        flops["validation"] += forward
        flops["train"] += forward if not layer.trainable else 2 * forward if first else 3 * forward
        first = first and not layer.trainable
    return flops


def trainable_parameters(model: keras.Model) -> int:
    """Weights that training updates (fixed preprocessing and batch-norm statistics aside)."""
    return sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)


def _initializer(name: str, seed: int) -> keras.initializers.Initializer:
    return keras.initializers.get({"class_name": name, "config": {"seed": seed}})
