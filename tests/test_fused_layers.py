"""The cheaper training layers compute what Keras' own do, and the logged model is Keras'."""

import keras
import numpy as np
import pytest

from cifar10_mlp.training import fused_layers


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_fused_batch_norm_trains_as_keras_batch_norm(dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 24)) * 3 + 1).astype("float32")
    layers = [cls(dtype=dtype, momentum=0.9) for cls in
              (keras.layers.BatchNormalization, fused_layers.FusedBatchNormalization)]
    gamma, beta = rng.uniform(0.5, 2, 24), rng.standard_normal(24)
    for layer in layers:
        layer.build(x.shape)
        layer.set_weights([gamma.astype("float32"), beta.astype("float32"),
                           *layer.get_weights()[2:]])
    outputs = [np.asarray(layer(x, training=True), "float32") for layer in layers]
    tolerance = 1e-5 if dtype == "float32" else 2e-2  # bfloat16 keeps 8 bits
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=tolerance, atol=tolerance)
    keras_stats, fused_stats = (layer.get_weights()[2:] for layer in layers)
    for ours, theirs in zip(fused_stats, keras_stats, strict=True):  # moving mean, variance
        np.testing.assert_allclose(ours, theirs, rtol=1e-4)
    assert not np.allclose(keras_stats[1], 1.0)  # the averages moved at all
    np.testing.assert_allclose(  # and at inference it is Keras' layer
        np.asarray(layers[1](x, training=False), "float32"),
        np.asarray(layers[0](x, training=False), "float32"), rtol=tolerance, atol=tolerance)


def test_cheap_dropout_drops_at_its_rate_and_scales_what_it_keeps():
    layer = fused_layers.CheapDropout(0.2, seed=3)
    x = np.ones((400, 500), "float32")
    out = np.asarray(layer(x, training=True))
    dropped = (out == 0).mean()
    assert abs(dropped - 0.2) < 0.005
    np.testing.assert_allclose(out[out != 0], 1 / (1 - 13107 / 65536), rtol=1e-6)
    again = np.asarray(layer(x, training=True))
    assert not np.array_equal(again == 0, out == 0)  # a new mask each step
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)


def test_cheap_dropout_masks_follow_the_seed():
    x = np.ones((50, 64), "float32")
    first, second = (np.asarray(fused_layers.CheapDropout(0.5, seed=7)(x, training=True))
                     for _ in range(2))
    np.testing.assert_array_equal(first, second)


def test_the_model_with_keras_layers_predicts_the_same_and_has_none_of_ours():
    inputs = keras.Input((8,))
    x = keras.layers.Dense(16)(inputs)
    x = fused_layers.FusedBatchNormalization()(x)
    x = fused_layers.CheapDropout(0.3, seed=1)(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    x_train = np.random.default_rng(1).standard_normal((32, 8)).astype("float32")
    for _ in range(3):  # move the batch-norm statistics away from their start
        model(x_train, training=True)
    plain = fused_layers.with_keras_layers(model)
    assert not any(type(layer) in fused_layers.FUSED_TO_KERAS for layer in plain.layers)
    assert {type(layer).__name__ for layer in plain.layers} >= {"BatchNormalization",
                                                                "Dropout"}
    np.testing.assert_allclose(plain.predict(x_train, verbose=0),
                               model.predict(x_train, verbose=0), rtol=1e-6, atol=1e-6)
