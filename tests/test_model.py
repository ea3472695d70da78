import keras
import numpy as np
import pytest
from omegaconf import OmegaConf

from cifar10_mlp.data import preprocess
from cifar10_mlp.training import model


def model_cfg(**changes):
    base = {"hidden": [64, 32], "block": "dense", "expansion": 4, "activation": "relu",
            "dropout": 0.0, "norm": "none", "weight_decay": 0.0, "initializer": "he_normal",
            "precision": "float32", "fused_layers": False}
    return OmegaConf.create({**base, **changes})


NO_AUGMENTATION = OmegaConf.create({"flip": "none", "translate": 0.0})


def build(n_classes=10, augment=NO_AUGMENTATION, **changes):
    prep = preprocess.fit(OmegaConf.create({"name": "scale"}),
                          np.zeros((2, 32, 32, 3), np.uint8))
    return model.build(model_cfg(**changes), augment, n_classes, prep, seed=0)


def dense_units(mlp):
    return [layer.units for layer in mlp.layers
            if isinstance(layer, keras.layers.Dense) and layer.trainable]


def trainable_count(mlp):
    return sum(int(np.prod(w.shape)) for w in mlp.trainable_weights)


def test_widths_and_parameter_count_follow_the_config():
    mlp = build(hidden=[64, 32], n_classes=3)
    assert dense_units(mlp) == [64, 32, 3]
    assert trainable_count(mlp) == (3072 * 64 + 64) + (64 * 32 + 32) + (32 * 3 + 3)


def test_batch_norm_replaces_biases_and_adds_scale_and_shift():
    mlp = build(hidden=[128], norm="batch")
    assert trainable_count(mlp) == 3072 * 128 + 2 * 128 + (128 * 10 + 10)
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in mlp.layers)


def test_layer_norm_keeps_biases_and_normalises_each_example():
    mlp = build(hidden=[128], norm="layer")
    assert trainable_count(mlp) == (3072 * 128 + 128) + 2 * 128 + (128 * 10 + 10)
    (norm,) = [layer for layer in mlp.layers
               if isinstance(layer, keras.layers.LayerNormalization)]
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    normalised = keras.Model(mlp.input, norm.output)(images).numpy()
    np.testing.assert_allclose(normalised.mean(axis=1), 0, atol=1e-4)  # per example
    np.testing.assert_allclose(normalised.std(axis=1), 1, atol=1e-2)


def test_residual_blocks_are_pre_norm_inverted_bottlenecks_with_a_skip():
    mlp = build(hidden=[32, 32, 32], block="residual", expansion=4, norm="layer", n_classes=3)
    block = (2 * 32) + (32 * 128 + 128) + (128 * 32 + 32)  # norm, expand, contract
    assert trainable_count(mlp) == (3072 * 32 + 32) + 3 * block + 2 * 32 + (32 * 3 + 3)
    assert len([layer for layer in mlp.layers if isinstance(layer, keras.layers.Add)]) == 3
    # with the inner layers zeroed each block is the identity: only the skips carry x
    for layer in mlp.layers:
        if layer.name.startswith("contract_"):
            layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    projected = keras.Model(mlp.input, mlp.get_layer("projection").output)(images)
    blocks_out = keras.Model(mlp.input, mlp.get_layer("residual_3").output)(images)
    np.testing.assert_allclose(blocks_out.numpy(), projected.numpy(), rtol=1e-6)


@pytest.mark.parametrize("dropout, expected", [(0.0, 0), (0.3, 2)])
def test_dropout_layers_only_when_asked(dropout, expected):
    mlp = build(dropout=dropout)
    rates = [layer.rate for layer in mlp.layers if isinstance(layer, keras.layers.Dropout)]
    assert rates == [dropout] * expected


def test_weight_decay_adds_an_l2_loss_per_dense_kernel():
    assert len(build(weight_decay=1e-4).losses) == 3
    assert build(weight_decay=0.0).losses == []


def test_takes_raw_uint8_images_and_outputs_probabilities():
    mlp = build()
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    probs = mlp.predict(images, verbose=0)
    assert probs.shape == (5, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_mixed_bfloat16_multiplies_in_bfloat16_and_keeps_weights_and_output_float32():
    mlp = build(hidden=[64, 32], norm="batch", dropout=0.1, precision="mixed_bfloat16")
    hidden = [layer for layer in mlp.layers if layer.name.startswith(("dense_", "batch_norm"))]
    assert len(hidden) == 4 and {layer.compute_dtype for layer in hidden} == {"bfloat16"}
    assert {w.dtype for w in mlp.weights} == {"float32"}  # what the optimizer updates
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    probs = mlp.predict(images, verbose=0)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # the same weights in float32 give nearly the same probabilities
    full = build(hidden=[64, 32], norm="batch", dropout=0.1)
    full.set_weights(mlp.get_weights())
    np.testing.assert_allclose(full.predict(images, verbose=0), probs, atol=0.05)
    assert not np.array_equal(full.predict(images, verbose=0), probs)


def test_same_seed_same_initial_weights():
    first, second = build(), build()
    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_augmentation_acts_in_training_only():
    augment = OmegaConf.create({"flip": "random", "translate": 0.2})
    mlp = build(augment=augment)
    assert {"random_flip", "random_translation"} <= {layer.name for layer in mlp.layers}
    images = np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    inference = [mlp(images, training=False).numpy() for _ in range(3)]
    np.testing.assert_array_equal(inference[0], inference[1])
    np.testing.assert_array_equal(inference[0], inference[2])
    np.testing.assert_allclose(inference[0], mlp.predict(images, verbose=0), rtol=1e-5)
    # the same images through the same weights differ once the random layers are on
    training = mlp(images, training=True).numpy()
    assert not np.allclose(training, inference[0], atol=1e-3)


def test_augmentation_leaves_the_weights_unchanged():
    plain = build()
    augmented = build(augment=OmegaConf.create({"flip": "random", "translate": 0.1}))
    assert trainable_count(plain) == trainable_count(augmented)


@pytest.mark.slow  # fits ZCA: an eigendecomposition of a 3072 x 3072 covariance
def test_matmul_flops_count_what_is_computed():
    mlp = build(hidden=[64, 32], n_classes=3)  # scale preprocessing: nothing fixed
    weights = [3072 * 64, 64 * 32, 32 * 3]
    flops = model.matmul_flops(mlp)
    assert flops["inference"] == flops["validation"] == 2 * sum(weights)
    # no input gradient for the first layer: 4 there, 6 per weight after it
    assert flops["train"] == 4 * weights[0] + 6 * (weights[1] + weights[2])
    images = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), np.uint8)
    pca = preprocess.fit(OmegaConf.create({"name": "pca", "components": 20, "epsilon": 0.1}),
                         images)
    whitened = model.build(model_cfg(hidden=[64]), NO_AUGMENTATION, 3, pca, seed=0)
    fixed, first, last = 3072 * 20, 20 * 64, 64 * 3
    forward = 2 * (fixed + first + last)
    assert model.matmul_flops(whitened) == {  # the fixed projection runs in every step
        "inference": forward, "validation": forward, "once": 0,
        "train": 2 * fixed + 4 * first + 6 * last}
    # ZCA: each image is whitened once, before training, not in every epoch
    zca = preprocess.fit(OmegaConf.create({"name": "zca", "epsilon": 0.1}), images)
    whitened = model.build(model_cfg(hidden=[64]), NO_AUGMENTATION, 3, zca, seed=0)
    fixed, first = 3072 * 3072, 3072 * 64
    assert model.matmul_flops(whitened) == {
        "inference": 2 * (fixed + first + last), "once": 2 * fixed,
        "validation": 2 * (first + last), "train": 4 * first + 6 * last}
