"""Batch normalisation and dropout whose training pass costs less than Keras' own.

Keras 3's ``BatchNormalization`` trains through a dozen separate ops (an upcast, two
moments, the normalisation, their gradients), and its ``Dropout`` draws a float32 uniform
number per unit: on a 2-core CPU together they took more of ``best_mlp``'s training step
than its matrix products (docs/performance.md; ``scripts/profile_step.py``). The subclasses here
compute the same functions in training and are Keras' own layers outside it:

- ``FusedBatchNormalization`` normalises a batch with TensorFlow's fused batch-norm kernel
  (one op forward, one backward), statistics in float32 whatever the input's precision,
  and moves its averages as Keras' layer does.
- ``CheapDropout`` draws 16 random bits per unit instead of 32, so its rate is rounded to
  a multiple of 1/65536 (0.2 is kept within 0.00001).

Both keep their parent's weights and config, and :func:`with_keras_layers` gives back the
model with Keras' own layers in their place: the one logged, which loads without this
package.
"""

from __future__ import annotations

import keras
import tensorflow as tf

BITS = 16  # random bits per dropout unit


class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` over the last axis of 2-D inputs, trained with
    TensorFlow's fused kernels."""

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None or len(inputs.shape) != 2:
            return super().call(inputs, training=training, mask=mask)
        units = inputs.shape[-1]
        # the fused kernel normalises the channels of images: a batch of vectors is a batch
        # of 1 x 1 images; its statistics are float32 whatever the input's precision
        outputs, mean, unbiased_variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=tf.reshape(inputs, (-1, 1, 1, units)),
            scale=tf.cast(self.gamma, "float32") if self.scale else tf.ones(units),
            offset=tf.cast(self.beta, "float32") if self.center else tf.zeros(units),
            mean=tf.zeros(0), variance=tf.zeros(0), epsilon=self.epsilon,
            data_format="NHWC", is_training=True)
        count = tf.cast(tf.shape(inputs)[0], "float32")
        variance = unbiased_variance * (count - 1) / tf.maximum(count, 1)  # as Keras' moments
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum
                                    + variance * (1 - self.momentum))
        return tf.reshape(outputs, tf.shape(inputs))


class CheapDropout(keras.layers.Dropout):
    """``keras.layers.Dropout`` whose masks come from 16 random bits per unit."""

    def call(self, inputs, training=False):
        if not training or self.rate == 0 or self.noise_shape is not None:
            return super().call(inputs, training=training)
        size = tf.size(inputs)
        bits = tf.random.stateless_uniform(  # two units' worth of bits per int32
            [(size + 1) // 2], seed=self.seed_generator.next(), minval=None, maxval=None,
            dtype="int32")
        units = tf.reshape(tf.bitcast(bits, "uint16"), tf.shape(inputs))
        dropped = round(self.rate * 2**BITS)
        # one multiplier per unit, 0 or 1 / (1 - rate): one pass forward, one backward
        scale = tf.constant(1 / (1 - dropped / 2**BITS), inputs.dtype)
        multiplier = tf.where(units >= tf.constant(dropped, "uint16"), scale,
                              tf.zeros((), inputs.dtype))
        return inputs * multiplier


FUSED_TO_KERAS = {FusedBatchNormalization: keras.layers.BatchNormalization,
                  CheapDropout: keras.layers.Dropout}


def with_keras_layers(model: keras.Model) -> keras.Model:
    """``model`` itself if it has none of these layers; else a copy with Keras' own layer
    in the place of each, holding the same weights (the same function at inference)."""
    if not any(type(layer) in FUSED_TO_KERAS for layer in model.layers):
        return model

    def keras_layer(layer):
        own = FUSED_TO_KERAS.get(type(layer), type(layer))
        return own.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=keras_layer)
    copy.set_weights(model.get_weights())
    return copy
